"""What every part of mair shares: how a user error is reported (``errors``: one line, a non-zero exit), how files
are written (``atomic``: temp file, fsync, rename, a plain write's modes) and how runs are recorded (``tracking``:
the one module that knows MLflow's API; tracking never breaks a run)."""
