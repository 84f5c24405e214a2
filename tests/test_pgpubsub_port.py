"""django-pgpubsub's test project (tests/pgpubsub_port: its models, channels and listeners,
rewritten) run on pgcelery after the rename: the real bridge and a real worker."""

import datetime
import decimal
import json

import pytest
from django.db import transaction

import pgcelery
from tests import support
from tests.pgpubsub_port.channels import PostReads
from tests.pgpubsub_port.models import Author, Child, ChildOfAbstract, Media, Post
from tests.testapp.models import Event

pytestmark = pytest.mark.usefixtures("running")


def recorded(listener, count):
    """What the listener recorded, in no order: its tasks may run concurrently."""
    name = f"port.{listener}"
    support.wait_until(lambda: Event.objects.filter(listener=name).count() >= count,
                       what=f"{count} {name} events")
    support.settle()
    return unordered(event.data for event in Event.objects.filter(listener=name))


def unordered(records):
    return sorted(records, key=lambda data: json.dumps(data, sort_keys=True))


def test_a_new_author_gets_a_first_post_and_the_other_listener_runs_too():
    picture = Media.objects.create(name="portrait.png")
    with transaction.atomic():
        pgcelery.set_notification_context({"content": "Hello from the context"})
        Author.objects.create(name="Ada", pen_name="A. L.", picture=picture)
    Author.objects.create(name="Grace")
    support.wait_until(lambda: Post.objects.count() == 2, what="two first posts")
    assert sorted(Post.objects.values_list("author__name", "content")) == [
        ("Ada", "Hello from the context"), ("Grace", "Welcome! This is your first post")]
    others = recorded("another_author_trigger", 2)
    assert others == unordered([
        {"name": "Ada", "pen_name": "A. L.", "picture": picture.key,
         "context": {"content": "Hello from the context"}},
        {"name": "Grace", "pen_name": None, "picture": None, "context": {}},
    ])


def test_reads_reach_both_listeners_with_the_declared_types():
    author = Author.objects.create(name="Reader")
    support.wait_until(lambda: Post.objects.filter(author=author).exists(), what="a first post")
    post = Post.objects.get(author=author)
    Post.fetch(post.pk)
    pgcelery.notify(PostReads, model_id=post.pk, model_type="Comment")  # date left out: None
    counted = recorded("count_post_reads", 2)
    assert counted == unordered([
        {"model_id": post.pk, "model_type": "Post", "date": str(datetime.date.today())},
        {"model_id": post.pk, "model_type": "Comment", "date": "None"},
    ])
    assert recorded("notify_post_owner", 2) == unordered([
        {"post": post.pk, "model_type": "Post", "others": ["context", "date"]},
        {"post": post.pk, "model_type": "Comment", "others": ["context", "date"]}])
    assert PostReads.name() == "tests.pgpubsub_port.channels.PostReads"


def test_deleting_a_post_emails_its_author_with_the_old_row():
    author = Author.objects.create(name="Writer")
    support.wait_until(lambda: Post.objects.filter(author=author).exists(), what="a first post")
    post = Post.objects.get(author=author)
    post_id = post.pk
    Post.objects.filter(pk=post_id).update(rating=decimal.Decimal("1.00000000000000000001"))
    post.delete()
    assert recorded("email_author", 1) == [
        {"author": "Writer", "post": post_id, "new": None, "rating": "1.00000000000000000001"}]


def test_saves_of_custom_keys_and_inherited_models_reach_their_listeners():
    media = Media.objects.create(name="clip.mp4")
    media.size = 1024
    media.save()
    child = Child.objects.create()  # rows in parent's table and child's
    orphan = ChildOfAbstract.objects.create()
    assert recorded("scan_media", 2) == unordered([{"key": media.key, "new_file": True},
                                                   {"key": media.key, "new_file": False}])
    assert recorded("post_child_save", 1) == [{"key": child.key, "created": True}]
    assert recorded("post_child_of_abstract_save", 1) == [{"key": orphan.key, "created": True}]
