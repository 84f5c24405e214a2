"""pgpubsub's test listeners in pgcelery: what they did in the listening process's memory
they record as Event rows, since they now run in workers."""

import datetime
from typing import Any, Dict, Optional  # noqa: UP035 - as pgpubsub's users write them

from django.utils import timezone

import pgcelery
from tests.pgpubsub_port.channels import (
    AuthorTriggerChannel,
    ChildOfAbstractTriggerChannel,
    ChildTriggerChannel,
    MediaTriggerChannel,
    PostReads,
    PostTriggerChannel,
)
from tests.pgpubsub_port.models import Author, Child, ChildOfAbstract, Media, Post
from tests.testapp.listeners import record


@pgcelery.listener(PostReads)
def count_post_reads(model_id: int, model_type: str, date: datetime.date):
    record("port.count_post_reads", model_id=model_id, model_type=model_type, date=str(date))


@pgcelery.listener(PostReads)
def notify_post_owner(model_id: int, model_type: str, **kwargs):
    post = Post.objects.get(pk=model_id)
    record("port.notify_post_owner", post=post.pk, model_type=model_type,
           others=sorted(kwargs))


@pgcelery.post_insert_listener(AuthorTriggerChannel, atomic=True)
def create_first_post_for_author(old: Author, new: Author,
                                 context: Optional[Dict[str, Any]] = None):  # noqa: UP006, UP045
    content = (context or {}).get("content", "Welcome! This is your first post")
    Post.objects.create(author_id=new.pk, content=content, date=timezone.now())


@pgcelery.post_insert_listener(AuthorTriggerChannel)
def another_author_trigger(old: Author, new: Author,
                           context: Optional[Dict[str, Any]] = None):  # noqa: UP006, UP045
    record("port.another_author_trigger", name=new.name, pen_name=new.pen_name,
           picture=new.picture_id, context=context)


@pgcelery.post_delete_listener(PostTriggerChannel)
def email_author(old: Post, new: Post):
    author = Author.objects.get(pk=old.author_id)
    record("port.email_author", author=author.name, post=old.pk, new=new, rating=str(old.rating))


@pgcelery.post_save_listener(MediaTriggerChannel)
def scan_media(old: Media, new: Media):
    record("port.scan_media", key=new.key, new_file=old is None)


@pgcelery.post_save_listener(ChildTriggerChannel)
def post_child_save(old: Child, new: Child):
    record("port.post_child_save", key=new.key, created=old is None)


@pgcelery.post_save_listener(ChildOfAbstractTriggerChannel)
def post_child_of_abstract_save(old: ChildOfAbstract, new: ChildOfAbstract):
    record("port.post_child_of_abstract_save", key=new.key, created=old is None)
