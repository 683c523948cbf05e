"""The live dashboard page (``GET /dashboard``) and the JSON it polls (``/v1/gateway/dashboard/*``)."""
