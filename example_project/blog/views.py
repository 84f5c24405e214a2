from django.http import JsonResponse
from django.views.decorators.http import require_POST

from blog.models import Author, Post


@require_POST
def create_author(request):
    author = Author.objects.create(name=request.POST.get("name", "Anonymous"))
    return JsonResponse({"id": author.pk, "name": author.name}, status=201)


def read_post(request, post_id: int):
    post = Post.fetch(post_id)
    return JsonResponse({"id": post.pk, "content": post.content, "author": post.author_id})
