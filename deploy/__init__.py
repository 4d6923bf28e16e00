"""Cloud Run GPU and Modal deployment, used by the `lsfn` CLI."""
