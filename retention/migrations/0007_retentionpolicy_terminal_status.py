from django.db import migrations, models


class Migration(migrations.Migration):
    """Own migration (own transaction): the policies 0006 disabled are updated before this ALTER."""

    dependencies = [
        ("retention", "0006_pending_deletions_listing_token_disable_bad_policies"),
    ]

    operations = [
        migrations.AddConstraint(
            model_name='retentionpolicy',
            constraint=models.CheckConstraint(condition=models.Q(('status__in', ['', 'succeeded', 'failed', 'dead', 'cancelled']), ('enabled', False), _connector='OR'), name='retentionpolicy_terminal_status', violation_error_message='Status must be a terminal status (succeeded, failed, dead, cancelled) or blank.'),
        ),
    ]
