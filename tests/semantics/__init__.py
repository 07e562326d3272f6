"""Task semantics (issue 4): each behaviour written once, run eagerly and through a worker."""
