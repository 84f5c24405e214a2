import datetime

from celery import shared_task
from django.db.models import F

import pgcelery
from blog.channels import AuthorTriggerChannel, PostReads
from blog.models import Author, Post, PostReadCount


@pgcelery.post_insert_listener(AuthorTriggerChannel)
def create_first_post_for_author(old: Author, new: Author) -> int:
    post = Post.objects.create(
        author_id=new.pk, content="Welcome! This is your first post", date=datetime.date.today()
    )
    return post.pk


@pgcelery.listener(PostReads, queue="stats", atomic=True)
@shared_task(bind=True, autoretry_for=(ConnectionError,), max_retries=5)
def update_post_reads(self, model_id: int, date: datetime.date) -> int:
    # atomic=True runs this in a transaction: locking the post serialises concurrent reads.
    Post.objects.select_for_update().get(pk=model_id)
    counter, _ = PostReadCount.objects.get_or_create(post_id=model_id, date=date)
    PostReadCount.objects.filter(pk=counter.pk).update(count=F("count") + 1)
    counter.refresh_from_db()
    return counter.count
