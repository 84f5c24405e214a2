from django.contrib import admin
from django.urls import path

from blog import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("authors/", views.create_author, name="create-author"),
    path("posts/<int:post_id>/", views.read_post, name="read-post"),
]
