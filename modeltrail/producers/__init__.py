"""What emits events: runs for trainers, the torch integration, the offline spool."""
