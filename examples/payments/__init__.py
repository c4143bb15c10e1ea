"""Card payments scored for fraud: the example domain of docs/your_data.md."""
