"""The outbox: the notifications recorded in the writer's transaction, until published."""

from django.contrib.postgres.fields import ArrayField
from django.db import models


class Notification(models.Model):
    """A notification recorded by a trigger or ``pgcelery.notify``, not yet published;
    or a chunk of them, for the rows of one bulk write.

    The bridge deletes the row once the broker accepted its tasks; a notification it
    cannot dispatch stays in a row of its own, marked failed with the reason. A listener's
    task that fails for good comes back as a failed delivery: a failed row naming that
    listener and task id, which a retry sends to that listener only.
    """

    id = models.BigAutoField(primary_key=True)
    uuid = models.UUIDField(
        null=True, blank=True,
        help_text="Seeds the Celery task ids of this notification; where a trigger left it "
                  "empty, its id and created_at do.",
    )
    channel = models.TextField(help_text="Dotted path of the channel.")
    trigger = models.TextField(
        blank=True, help_text="Name of the trigger that recorded it; empty for notify()."
    )
    payload = models.JSONField(
        help_text="The notification's payload; for a chunk of a bulk write, the list of its rows."
    )
    size = models.PositiveIntegerField(default=1, help_text="How many notifications the row holds.")
    side = models.TextField(
        null=True, blank=True,
        help_text="For a chunk: 'new' or 'old', which rows of the write it holds; 'batch' "
                  "for a failed delivery of a batch listener, whose payload lists its "
                  "notifications.",
    )
    context = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField()
    failed_at = models.DateTimeField(null=True, blank=True)
    failure = models.TextField(null=True, blank=True)
    listener = models.TextField(
        null=True, blank=True,
        help_text="For a failed delivery: the listener task it goes to, and only that one.",
    )
    task_id = models.TextField(
        null=True, blank=True, help_text="For a failed delivery: its Celery task id, kept."
    )
    attempts = models.PositiveIntegerField(
        null=True, blank=True, help_text="For a failed delivery: how many runs it had."
    )

    class Meta:
        db_table = "pgcelery_notification"
        indexes = [
            models.Index(
                fields=["id"],
                condition=models.Q(failed_at__isnull=True),
                name="pgcelery_pending_idx",
            )
        ]
        constraints = [
            # A delivery is recorded once, however many times its message is redelivered.
            models.UniqueConstraint(
                fields=["task_id"],
                condition=models.Q(task_id__isnull=False, failed_at__isnull=False),
                name="pgcelery_failed_delivery_once",
            )
        ]

    def __str__(self) -> str:
        return f"{self.channel} #{self.pk}"


class Delivery(models.Model):
    """A published task of a ``redeliver_after`` listener, remembered until it finishes.

    The bridge writes it in the transaction that claims the notification, before the
    message leaves; the worker marks it finished when the task succeeds or fails for good.
    One still unfinished at ``redeliver_at`` is published again under the same task id.
    A finished one is kept a while, so a copy of its message that reaches a worker later
    is recognised and skipped.
    """

    task_id = models.TextField(primary_key=True)
    listener = models.TextField(null=True, help_text="The listener task it goes to.")
    notification = models.BigIntegerField(
        null=True, help_text="The id the notification had in the outbox."
    )
    channel = models.TextField(null=True)
    trigger = models.TextField(null=True, blank=True)
    payload = models.JSONField(null=True)
    context = models.JSONField(null=True, blank=True)
    side = models.TextField(
        null=True, blank=True,
        help_text="'batch' for a batch listener's delivery, whose payload lists its "
                  "notifications.",
    )
    period = models.DurationField(null=True, help_text="The listener's redeliver_after.")
    key = models.JSONField(
        null=True, blank=True,
        help_text="For a listener with key=: the key of its notification(s), held while it "
                  "runs.",
    )
    publishes = models.PositiveIntegerField(default=1)
    redeliver_at = models.DateTimeField(null=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "pgcelery_delivery"
        indexes = [
            models.Index(
                fields=["redeliver_at"],
                condition=models.Q(finished_at__isnull=True),
                name="pgcelery_delivery_due_idx",
            ),
            models.Index(
                fields=["finished_at"],
                condition=models.Q(finished_at__isnull=False),
                name="pgcelery_delivery_done_idx",
            ),
            # The deliveries in flight of each listener and key, which limit its next ones.
            models.Index(
                fields=["listener", "key"],
                condition=models.Q(finished_at__isnull=True),
                name="pgcelery_delivery_busy_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.listener}[{self.task_id}]"


class FormedBatch(models.Model):
    """A batch of a listener with ``batch``, as the claim that first took its notifications
    formed it: written, and committed, before its message leaves, and deleted with its rows.
    A claim that finds them again (the first one's bridge died before its commit) publishes
    the same batch under the same task id, whatever else it finds pending."""

    task_id = models.TextField(primary_key=True)
    listener = models.TextField(help_text="The listener task the batch goes to.")
    ids = ArrayField(models.BigIntegerField(),
                     help_text="The outbox rows of its notifications, in its order.")
    positions = ArrayField(models.IntegerField(),
                           help_text="Each notification's position in its row.")
    created_at = models.DateTimeField()

    class Meta:
        db_table = "pgcelery_batch"

    def __str__(self) -> str:
        return f"{self.listener}[{self.task_id}]"


class Waiting(models.Model):
    """A notification of a listener with ``key``, ``ordered``, ``debounce`` or
    ``concurrency``, waiting in PostgreSQL (not in the broker) until its key or a slot of
    the listener is free.

    The claim that takes the notification from the outbox moves it here, in its
    transaction; the bridge publishes it once the listener's deliveries in flight allow
    (``pgcelery_delivery``), and deletes it in the transaction that remembers its delivery.
    """

    id = models.BigAutoField(primary_key=True)
    listener = models.TextField(help_text="The listener task it goes to.")
    key = models.JSONField(null=True, blank=True,
                           help_text="The value of the listener's key field; null without key=.")
    notification = models.BigIntegerField(help_text="The id the notification had in the outbox.")
    position = models.IntegerField(default=0, help_text="Its position in that outbox row.")
    seed = models.UUIDField(help_text="Seeds its task id, as the outbox row's uuid does.")
    channel = models.TextField()
    trigger = models.TextField(blank=True)
    payload = models.JSONField()
    context = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(help_text="When the writer recorded it.")

    class Meta:
        db_table = "pgcelery_waiting"
        indexes = [
            models.Index(fields=["listener", "key", "notification", "position"],
                         name="pgcelery_waiting_order_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.listener} #{self.notification}"


class TaskRecord(models.Model):
    """The id of a task an ``atomic=True`` listener committed, so a redelivery is a no-op."""

    task_id = models.CharField(max_length=255, primary_key=True)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "pgcelery_taskrecord"

    def __str__(self) -> str:
        return self.task_id
