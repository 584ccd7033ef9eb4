//! What the chat-template budget costs on a normal render: `ChatTemplate::render` (fuel that
//! counts instructions and data, the filters that pay before copying, the patched minijinja)
//! against the same template in a plain minijinja environment with no fuel and the built-in
//! filters, for three real templates and two conversation sizes (fastest of 7 alternating
//! rounds of each).
//!
//! Run: `cargo bench --bench chat_template [-- --json PATH]`. Prints a table; with `--json`,
//! writes the figures there too.

use std::time::Instant;

use infire::tokenizer::{ChatMessage, ChatTemplate};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Serde, Value};
use minijinja::{context, Environment};

/// SmolLM2-135M-Instruct's template (the default model's).
const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Meta-Llama-3-8B-Instruct's template (`trim`, `set` per message).
const LLAMA3: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

/// Qwen2.5's template without its tool branches (a namespace, `startswith`, `join`-free).
const QWEN25: &str = "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}{%- else %}{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}{%- endif %}{%- for message in messages %}{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or (message.role == 'assistant') %}{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}";

/// Alternating timing rounds per configuration.
const ROUNDS: usize = 7;

fn conversation(messages: usize, bytes: usize) -> Vec<ChatMessage> {
    (0..messages)
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            ChatMessage::new(role, "word ".repeat(bytes / 5))
        })
        .collect()
}

/// Mean seconds per call of `f` over `iters` calls (after one warm-up call).
fn time(iters: usize, mut f: impl FnMut() -> usize) -> f64 {
    let mut sink = f();
    let started = Instant::now();
    for _ in 0..iters {
        sink = sink.wrapping_add(f());
    }
    std::hint::black_box(sink);
    started.elapsed().as_secs_f64() / iters as f64
}

fn main() {
    let json_path = std::env::args().skip_while(|a| a != "--json").nth(1);
    let mut rows = Vec::new();
    println!("| template | messages × bytes | budgeted | plain minijinja | cost |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, source) in [
        ("SmolLM2", SMOLLM2),
        ("Llama-3", LLAMA3),
        ("Qwen2.5", QWEN25),
    ] {
        let budgeted = ChatTemplate::new(source, Some("<s>"), Some("</s>")).unwrap();
        let mut plain = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .unwrap();
        plain.set_syntax(syntax);
        plain.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        plain.add_template("t", source).unwrap();
        let plain = plain.get_template("t").unwrap();
        for (messages, bytes, iters) in [(10, 200, 2000), (1000, 200, 40)] {
            let chat = conversation(messages, bytes);
            // Alternating rounds, the fastest of each: the machine is shared, and the minimum
            // is what the code costs without other work in the way.
            let (mut with_budget, mut without) = (f64::MAX, f64::MAX);
            for _ in 0..ROUNDS {
                let t = time(iters, || budgeted.render(&chat, true).unwrap().len());
                with_budget = with_budget.min(t);
                let t = time(iters, || {
                    let ctx = context! { messages => Value::from(Serde(&chat)),
                    add_generation_prompt => true,
                    bos_token => "<s>", eos_token => "</s>" };
                    plain.render(ctx).unwrap().len()
                });
                without = without.min(t);
            }
            let cost = with_budget / without - 1.0;
            println!(
                "| {name} | {messages} × {bytes} | {:.1} µs | {:.1} µs | {:+.0} % |",
                with_budget * 1e6,
                without * 1e6,
                cost * 100.0
            );
            rows.push(format!(
                "{{\"template\": \"{name}\", \"messages\": {messages}, \"bytes\": {bytes}, \
                 \"budgeted_us\": {:.2}, \"plain_us\": {:.2}}}",
                with_budget * 1e6,
                without * 1e6
            ));
        }
    }
    if let Some(path) = json_path {
        std::fs::write(path, format!("[{}]\n", rows.join(",\n"))).unwrap();
    }
}
