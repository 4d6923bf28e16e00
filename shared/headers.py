"""Headers lsfn's own programs agree on (the function, its front door, `lsfn connect`), named
in one place."""

__all__ = ["DEADLINE_HEADER", "WEBHOOK_SECRET_HEADER"]

# Label Studio's webhooks cannot send the connection's Basic auth but can send custom headers:
# `lsfn connect` puts the shared secret in this one, the function checks it.
WEBHOOK_SECRET_HEADER = "X-Webhook-Secret"
# The seconds a caller (the front door) leaves a /predict; only ever shortens PREDICT_DEADLINE.
DEADLINE_HEADER = "X-Predict-Deadline"
