"""students stage."""
