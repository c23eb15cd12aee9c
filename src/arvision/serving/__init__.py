"""Serving: an HTTP API and web page (:func:`arvision.serving.app.create_app`, ``arvision serve``) over a
queue that batches compatible requests on one worker thread (:mod:`arvision.serving.batching`)."""
