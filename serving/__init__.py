"""Shipyard's prediction server: a BentoML service over ``edge``'s runners. No TensorFlow, no ``training``.

``serving.service`` (``bentoml serve serving.service:Shipyard``) holds the services and their APIs;
``serving.schemas`` the request and response models; ``serving.http`` the request guard and error bodies;
``serving.processing`` decoding, ranking and the guarded monitor; ``serving.inference`` the warmed-up
runner and the batch wire format; ``serving.batching`` how the API reaches the batchable model;
``serving.settings`` the :class:`~edge.config.ServeConfig` from the environment; ``serving.monitoring``
latency, accuracy and drift; ``serving.loadtest`` the Locust scenarios. Nothing is imported here, so
that ``import serving.<module>`` loads only what that module needs.
"""
