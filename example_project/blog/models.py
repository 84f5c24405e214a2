import datetime

from django.db import models

import pgcelery


class Author(models.Model):
    name = models.CharField(max_length=100)

    def __str__(self) -> str:
        return self.name


class Post(models.Model):
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="posts")
    content = models.TextField()
    date = models.DateField()

    @classmethod
    def fetch(cls, post_id: int) -> "Post":
        """Reads a post and records the read; the read count is updated by a listener."""
        post = cls.objects.get(pk=post_id)
        pgcelery.notify("blog.channels.PostReads", model_id=post_id, date=datetime.date.today())
        return post


class PostReadCount(models.Model):
    post = models.ForeignKey(Post, on_delete=models.CASCADE, related_name="read_counts")
    date = models.DateField()
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["post", "date"], name="one_count_per_day")]
