"""Model code: definitions, training, export and the SavedModel ModelHandler."""
