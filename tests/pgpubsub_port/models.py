"""The shapes django-pgpubsub's test project exercises: a custom primary key, db_column
names, foreign keys, a many-to-many, a wide Decimal, multi-table and abstract inheritance."""

import datetime

from django.contrib.auth.models import User
from django.db import models

import pgcelery


class Media(models.Model):
    key = models.AutoField(primary_key=True)
    name = models.TextField()
    content_type = models.TextField(null=True)
    size = models.BigIntegerField(null=True)


class Author(models.Model):
    user = models.ForeignKey(User, on_delete=models.PROTECT, null=True)
    name = models.TextField()
    age = models.IntegerField(null=True)
    active = models.BooleanField(default=True)
    picture = models.ForeignKey(Media, null=True, on_delete=models.PROTECT, db_column="picture")
    pen_name = models.TextField(db_column="other", null=True)


class Post(models.Model):
    content = models.TextField()
    date = models.DateTimeField()
    author = models.ForeignKey(Author, null=True, on_delete=models.SET_NULL,
                               related_name="entries")
    files = models.ManyToManyField(Media)
    rating = models.DecimalField(null=True, decimal_places=20, max_digits=40)

    @classmethod
    def fetch(cls, post_id: int) -> "Post":
        """Reads a post and records the read, as pgpubsub's documentation does."""
        post = cls.objects.get(pk=post_id)
        pgcelery.notify("tests.pgpubsub_port.channels.PostReads", model_id=post_id,
                        date=datetime.date.today())
        return post


class Parent(models.Model):
    key = models.AutoField(primary_key=True, editable=False)


class Child(Parent):
    pass


class AbstractParent(models.Model):
    key = models.AutoField(primary_key=True, editable=False)

    class Meta:
        abstract = True


class ChildOfAbstract(AbstractParent):
    pass
