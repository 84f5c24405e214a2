"""The outbox in the Django admin: what is pending, what failed and why."""

from django.contrib import admin

from pgcelery.models import Notification


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ("id", "channel", "trigger", "created_at", "failed_at", "failure")
    list_filter = ("channel", ("failed_at", admin.EmptyFieldListFilter))
    search_fields = ("channel", "failure")
    readonly_fields = [field.name for field in Notification._meta.fields]
    ordering = ("id",)

    def has_add_permission(self, request) -> bool:
        return False
