"""The demo's pieces below the ``ttt_kd_demo`` command: its scans and its figures."""
