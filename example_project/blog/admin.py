from django.contrib import admin

from blog.models import Author, Post, PostReadCount

admin.site.register([Author, Post, PostReadCount])
