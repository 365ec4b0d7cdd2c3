module finetune.test/ollama_render

go 1.19
