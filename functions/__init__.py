"""One package per model function (functions/<model>/main.py)."""
