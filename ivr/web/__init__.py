"""HTTP: the app factory, the route table, the typed bodies and their OpenAPI document, the APIs and pages."""
