"""The outbox in the Django admin: what is pending, what failed and why; retry or discard."""

from django.contrib import admin, messages

from pgcelery import failures
from pgcelery.models import Notification


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ("id", "channel", "listener", "created_at", "failed_at", "failure",
                    "attempts")
    list_filter = ("channel", ("failed_at", admin.EmptyFieldListFilter))
    search_fields = ("channel", "failure", "listener", "task_id")
    readonly_fields = [field.name for field in Notification._meta.fields]
    ordering = ("id",)
    actions = ["retry_failed", "discard_failed"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Retry the selected failed notifications")
    def retry_failed(self, request, queryset) -> None:
        count = failures.retry(queryset)
        self.message_user(request, f"{count} failed notification(s) queued again.",
                          messages.SUCCESS)

    @admin.action(description="Discard the selected failed notifications")
    def discard_failed(self, request, queryset) -> None:
        count = failures.discard(queryset)
        self.message_user(request, f"{count} failed notification(s) discarded.",
                          messages.SUCCESS)
