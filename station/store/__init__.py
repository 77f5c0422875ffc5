"""What the station keeps on its card: events, outbox, migrations, retention, resident plates."""
