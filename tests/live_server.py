"""A real uvicorn server in a thread, for the tests that need sockets (disconnects, a browser,
lm-evaluation-harness)."""

import threading
import time
from contextlib import contextmanager

import uvicorn


@contextmanager
def running(app):
    """Serve `app` on a free port of 127.0.0.1; yields its base URL, stops it on exit."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:  # start-up takes milliseconds; a failed start ends the thread
        if not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join()
