"""`hdlm serve`: a live denoising page and an OpenAI-compatible API for any hdlm model.

* `app.create_app(lm, name, api_key, max_waiting)`: the ASGI application (FastAPI);
* `app.serve(lm, name, host, port, api_key, max_waiting)`: run it with uvicorn until SIGTERM or
  Ctrl-C (the running request finishes, then the worker stops);
* `worker`: the one thread the model runs on, with its bounded queue;
* `schema`: request bodies and their checks (sampler options from the registry);
* `jobs`: what each endpoint runs on the model; `live`: the live view's frames.

FastAPI and uvicorn are the `serve` extra (`pip install 'hdlm[serve]'`); only this package
imports them.
"""
