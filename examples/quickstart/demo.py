"""Run the quickstart end to end: start a worker, run the client, stop the worker.

The same as typing ``taskq -A proj worker -l info`` in one terminal and
``python client.py`` in another, in this directory.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
taskq = shutil.which("taskq") or os.path.join(os.path.dirname(sys.executable), "taskq")
worker = subprocess.Popen([taskq, "-A", "proj", "worker", "-l", "info", "-c", "4"], cwd=here)
try:
    time.sleep(1.0)
    if worker.poll() is not None:
        sys.exit(f"the worker exited with code {worker.returncode}")
    code = subprocess.call([sys.executable, "client.py"], cwd=here)
finally:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=15)
    except subprocess.TimeoutExpired:
        worker.kill()
sys.exit(code)
