"""The recommendation gateway (``recsys-gateway``): the HTTP API that runs the four serving
stages, routes users between the stable and canary versions, and logs what it served."""
