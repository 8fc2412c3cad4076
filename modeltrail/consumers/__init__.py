"""What acts on events: subscriptions, webhooks, audit export, scheduled jobs."""
