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
    #: Pending and failed notifications alike are shown as recorded, never edited.

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        """Only a failed notification may be deleted (discarded): a pending one is the
        bridge's to publish, and deleting it would lose it."""
        if obj is None:  # the list page: the discard action checks each row itself
            return super().has_delete_permission(request)
        return obj.failed_at is not None and super().has_delete_permission(request, obj)

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # it would delete pending notifications too
        return actions

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
