"""The miniature Colony backend (only what the migrations need)."""
