"""The payment engine: Celery tasks, the scan, dunning, recovery and reconcile, payment rails,
signers and chain access, metrics; development tools in autopay.devtools."""
