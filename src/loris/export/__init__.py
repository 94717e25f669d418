"""Exporters: merged safetensors, GGUF (converter + quantizers), Ollama, Hub."""
