"""Publishing: `wavlink-push` (`push`) and model cards (`cards`)."""
