"""Using a trained student: `generate` (text generation from a saved student, `transmamba generate`)."""
