"""The operator display: a full-screen page for the lane's touch screen, served by the daemon.

``operator.py`` builds the Starlette app and runs it on uvicorn in a thread of the daemon;
``desk.py`` holds what the page shows and does (status, alarms, PIN-guarded actions, live events);
``live.py`` encodes the live picture once for every viewer; ``pin.py`` hashes and rate-limits the
operator PIN. The page itself is static HTML/JS in ``static/`` (no build step on the device).
"""
