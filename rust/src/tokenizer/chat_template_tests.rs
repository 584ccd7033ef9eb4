//! Chat templates in the wild render as transformers renders them. The templates are the models'
//! own (literal test data); the expectations are what transformers 5.24's
//! `_compile_jinja_template(..).render(...)` returned for the same inputs.

use super::*;

/// SmolLM2-135M-Instruct (ChatML with a default system prompt), from its GGUF's `tokenizer.chat_template`.
const SMOLLM2: &str = r#"{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system
You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
' }}{% endif %}{{'<|im_start|>' + message['role'] + '
' + message['content'] + '<|im_end|>' + '
'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant
' }}{% endif %}"#;

/// Meta-Llama-3-8B-Instruct (`message['content'] | trim`, `loop.index0`, `bos_token`).
const LLAMA3: &str = r#"{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"#;

/// Llama-3.2-Instruct (`messages[0]['content']|trim`, `strftime_now`, tools via `tojson(indent=4)`).
const LLAMA32: &str = r#"{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"#;

/// Mistral/Mixtral-Instruct (`raise_exception` when roles do not alternate).
const MISTRAL: &str = r#"{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"#;

/// Qwen2.5-Instruct (ChatML, tools through `tojson`, `message.tool_calls` on plain messages).
const QWEN25: &str = r#"{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"#;

/// (template, conversation, add_generation_prompt, what transformers renders).
const EXPECTED: &[(&str, &str, bool, &str)] = &[
    (SMOLLM2, "system_first", true, "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"),
    (SMOLLM2, "system_first", false, "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"),
    (SMOLLM2, "user_only", true, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n  Bonjour, 世界 😀  \n<|im_end|>\n<|im_start|>assistant\n"),
    (SMOLLM2, "user_only", false, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n  Bonjour, 世界 😀  \n<|im_end|>\n"),
    (LLAMA3, "system_first", true, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
    (LLAMA3, "system_first", false, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"),
    (LLAMA3, "user_only", true, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nBonjour, 世界 😀<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
    (LLAMA3, "user_only", false, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nBonjour, 世界 😀<|eot_id|>"),
    (LLAMA32, "system_first", true, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: {DATE}\n\nYou are terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
    (LLAMA32, "system_first", false, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: {DATE}\n\nYou are terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"),
    (LLAMA32, "user_only", true, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: {DATE}\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nBonjour, 世界 😀<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
    (LLAMA32, "user_only", false, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: {DATE}\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nBonjour, 世界 😀<|eot_id|>"),
    (MISTRAL, "user_only", true, "<s>[INST]   Bonjour, 世界 😀  \n [/INST]"),
    (MISTRAL, "user_only", false, "<s>[INST]   Bonjour, 世界 😀  \n [/INST]"),
    (MISTRAL, "alternating", true, "<s>[INST] a [/INST]b</s>[INST] c [/INST]"),
    (MISTRAL, "alternating", false, "<s>[INST] a [/INST]b</s>[INST] c [/INST]"),
    (QWEN25, "system_first", true, "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"),
    (QWEN25, "system_first", false, "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"),
    (QWEN25, "user_only", true, "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n  Bonjour, 世界 😀  \n<|im_end|>\n<|im_start|>assistant\n"),
    (QWEN25, "user_only", false, "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n  Bonjour, 世界 😀  \n<|im_end|>\n"),
];

/// The conversations of [`EXPECTED`], by name.
fn conversation(name: &str) -> Vec<ChatMessage> {
    match name {
        "system_first" => vec![
            ChatMessage::new("system", "You are terse."),
            ChatMessage::new("user", "Hi there!"),
            ChatMessage::new("assistant", "Hello! How can I help?"),
            ChatMessage::new("user", "What is 2+2?"),
        ],
        "user_only" => vec![ChatMessage::new("user", "  Bonjour, 世界 😀  \n")],
        "alternating" => vec![
            ChatMessage::new("user", "a"),
            ChatMessage::new("assistant", "b"),
            ChatMessage::new("user", "c"),
        ],
        other => panic!("no conversation {other}"),
    }
}

/// The BOS/EOS texts each template's model passes.
fn compile(source: &str) -> ChatTemplate {
    let (bos, eos) = match source {
        s if s == LLAMA3 || s == LLAMA32 => (Some("<|begin_of_text|>"), Some("<|eot_id|>")),
        s if s == MISTRAL => (Some("<s>"), Some("</s>")),
        s if s == QWEN25 => (None, Some("<|im_end|>")),
        _ => (Some("<|im_start|>"), Some("<|im_end|>")),
    };
    ChatTemplate::new(source, bos, eos).expect("template compiles")
}

#[test]
fn real_templates_render_as_transformers_does() {
    let today = template_functions::strftime(
        "%d %b %Y",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    );
    for &(source, name, add_generation_prompt, expected) in EXPECTED {
        let rendered = compile(source)
            .render(&conversation(name), add_generation_prompt)
            .expect("render");
        // Llama-3.2 writes today's date (strftime_now); transformers was given "{DATE}".
        assert_eq!(
            rendered,
            expected.replace("{DATE}", &today),
            "{name} {add_generation_prompt}"
        );
    }
}

#[test]
fn raise_exception_becomes_a_tokenizer_error_with_its_message() {
    let template = compile(MISTRAL);
    for messages in [
        conversation("system_first"),
        vec![ChatMessage::new("user", "a"), ChatMessage::new("user", "b")],
    ] {
        match template.render(&messages, true) {
            Err(Error::Tokenizer(message)) => assert!(
                message.ends_with(
                    "Conversation roles must alternate user/assistant/user/assistant/..."
                ),
                "{message}"
            ),
            other => panic!("expected the template's exception, got {other:?}"),
        }
    }
}

#[test]
fn tojson_writes_what_json_dumps_writes() {
    let template = ChatTemplate::new(
        "{{ {'b': [1, 2.5, 'é<&>'], 'a': none, 't': true} | tojson }}|\
         {{ {'b': 1, 'a': {'d': 2, 'c': 3}} | tojson(sort_keys=true) }}|\
         {{ 'é' | tojson(ensure_ascii=true) }}|{{ [1, 2] | tojson(separators=[',', ':']) }}|\
         {{ {'k': [1], 'e': []} | tojson(indent=2) }}",
        None,
        None,
    )
    .expect("compiles");
    // json.dumps({'b': [1, 2.5, 'é<&>'], 'a': None, 't': True}, ensure_ascii=False) and friends.
    let expected = "{\"b\": [1, 2.5, \"é<&>\"], \"a\": null, \"t\": true}|\
                    {\"a\": {\"c\": 3, \"d\": 2}, \"b\": 1}|\"\\u00e9\"|[1,2]|\
                    {\n  \"k\": [\n    1\n  ],\n  \"e\": []\n}";
    assert_eq!(template.render(&[], false).expect("render"), expected);
}

#[test]
fn python_methods_work() {
    let source = "{% for m in messages %}{{ m.content.strip().upper() }}\
                  {% if m.content.startswith(' x') %}!{% endif %}{{ m.get('role') }};{% endfor %}";
    let template = ChatTemplate::new(source, None, None).expect("compiles");
    let messages = [
        ChatMessage::new("user", " xy "),
        ChatMessage::new("bot", "z"),
    ];
    assert_eq!(
        template.render(&messages, false).expect("render"),
        "XY!user;Zbot;"
    );
}

/// transformers enables Jinja's loop controls; minijinja needs its `loop_controls` feature.
#[test]
fn loop_controls_work() {
    let source = "{% for m in messages %}{% if m.role == 'skip' %}{% continue %}{% endif %}\
                  {{ m.content }}{% if loop.index == 3 %}{% break %}{% endif %}{% endfor %}";
    let template = ChatTemplate::new(source, None, None)
        .expect("compiles (needs minijinja's `loop_controls` feature)");
    let messages =
        ["a", "b", "c", "d"].map(|c| ChatMessage::new(if c == "b" { "skip" } else { "user" }, c));
    assert_eq!(template.render(&messages, false).expect("render"), "ac");
}

#[test]
fn undefined_special_tokens_render_empty_and_bad_templates_fail_to_compile() {
    let template = ChatTemplate::new("[{{ bos_token }}]", None, None).expect("compiles");
    assert_eq!(template.render(&[], true).expect("render"), "[]");
    assert!(matches!(
        ChatTemplate::new("{% if %}", None, None),
        Err(Error::Tokenizer(_))
    ));
    let failing =
        ChatTemplate::new("{{ messages[0].content.nope() }}", None, None).expect("compiles");
    assert!(matches!(
        failing.render(&[ChatMessage::new("user", "x")], true),
        Err(Error::Tokenizer(_))
    ));
}

/// A template that loops (almost) without end runs out of fuel quickly, with a clear error.
#[test]
fn endless_loops_run_out_of_fuel() {
    let nested = "{% for i in range(100000) %}{% for j in range(100000) %}\
                  {% if i == j %}{% endif %}{% endfor %}{% endfor %}";
    let template = ChatTemplate::new(nested, None, None).expect("compiles");
    let started = std::time::Instant::now();
    let e = template.render(&[], true).unwrap_err().to_string();
    assert!(e.contains("budget of 2097152 instructions"), "{e}");
    assert!(started.elapsed().as_secs() < 30, "{:?}", started.elapsed());
}

/// Output that grows past the cap stops at the cap, without buffering more: writing one string
/// again and again costs little fuel per byte, so the cap is reached first.
#[test]
fn output_is_capped() {
    let wide = "{% set s = 'x' * 1048576 %}{% for i in range(100) %}{{ s }}{% endfor %}";
    let template = ChatTemplate::new(wide, None, None).expect("compiles");
    let e = template.render(&[], true).unwrap_err().to_string();
    assert!(e.contains("output exceeds the limit"), "{e}");
}

/// A `set` inside a loop is scoped to one iteration (as in Jinja), so `s ~ s` there does not
/// compound; string repetition past minijinja's 100 MB limit is refused before allocating.
#[test]
fn doubling_in_a_loop_does_not_compound_and_repetition_is_bounded() {
    let looped = "{% set s = 'x' %}{% for i in range(64) %}{% set s = s ~ s %}{% endfor %}\
                  {{ s|length }}";
    let template = ChatTemplate::new(looped, None, None).expect("compiles");
    assert_eq!(template.render(&[], true).unwrap(), "1");
    let repeated = "{% set s = 'x' * 100 %}{{ (s * 10000000)|length }}";
    let template = ChatTemplate::new(repeated, None, None).expect("compiles");
    let e = template.render(&[], true).unwrap_err().to_string();
    assert!(e.contains("memory budget of 128 MiB"), "{e}");
}

/// The end of Qwen3's template: `enable_thinking=False` (a `chat_template_kwargs` entry) writes
/// an empty thinking block; extra variables reach the template, `messages` cannot be replaced.
#[test]
fn extra_variables_reach_the_template() {
    const QWEN3_END: &str = "{%- for message in messages %}{{ message.content }}{%- endfor %}\
        {%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}\
        {%- if enable_thinking is defined and enable_thinking is false %}\
        {{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}\
        {%- if tools %}[{{ tools | length }} tools]{%- endif %}";
    let t = compile(QWEN3_END);
    let msgs = vec![ChatMessage::new("user", "hi")];
    let plain = t.render(&msgs, true).unwrap();
    assert_eq!(plain, "hi<|im_start|>assistant\n");
    let extra = serde_json::json!({
        "enable_thinking": false,
        "tools": [{"type": "function"}],
        "messages": [],
    });
    let got = t
        .render_with(&msgs, true, extra.as_object().unwrap())
        .unwrap();
    assert_eq!(
        got,
        "hi<|im_start|>assistant\n<think>\n\n</think>\n\n[1 tools]"
    );
}
