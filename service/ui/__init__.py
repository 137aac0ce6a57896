"""`classifier ui`: a page to try the classifier in a browser (server.py, and the page in static/)."""
