"""The trader API's routers, one module per resource."""
