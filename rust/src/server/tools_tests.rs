use super::super::tool_calls::{parse_output, ToolStream};
use super::*;
use crate::structured::GrammarCompiler;
use crate::tokenizer::test_vocab::gpt2_metadata;
use crate::tokenizer::Tokenizer;

fn weather() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "parameters":
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

#[test]
fn bad_tools_and_choices_name_the_problem() {
    let cases = [
        (json!([{"type": "retrieval"}]), None, "type"),
        (json!([{"type": "function"}]), None, "function"),
        (
            json!([{"type": "function", "function": {"name": "a b"}}]),
            None,
            "name",
        ),
        (
            json!([{"type": "function", "function": {"name": "f", "parameters": 3}}]),
            None,
            "parameters",
        ),
        (weather(), Some(json!("sometimes")), "tool_choice"),
        (
            weather(),
            Some(json!({"type": "function", "function": {"name": "nope"}})),
            "nope",
        ),
    ];
    for (tools, choice, word) in cases {
        let e = parse(Some(&tools), choice.as_ref(), None, "").unwrap_err();
        assert!(e.message.contains(word), "{} should name {word}", e.message);
    }
    assert!(parse(Some(&weather()), Some(&json!("none")), None, "")
        .unwrap()
        .is_none());
}

#[test]
fn required_and_named_grammars_compile_and_the_format_follows_the_template() {
    let tok = Tokenizer::from_gguf_metadata(&gpt2_metadata(None, None)).unwrap();
    let c = GrammarCompiler::new(tok, &[2]);
    for (template, format) in [
        ("{{ '<tool_call>' }}", ToolFormat::Hermes),
        ("[TOOL_CALLS]", ToolFormat::Mistral),
        ("<|python_tag|>", ToolFormat::Llama3Json),
        ("plain chatml", ToolFormat::Hermes),
    ] {
        for choice in [
            json!("required"),
            json!({"type": "function", "function": {"name": "get_weather"}}),
        ] {
            let t = parse(Some(&weather()), Some(&choice), None, template)
                .unwrap()
                .unwrap();
            assert_eq!(t.format, format);
            c.compile(&t.grammar().unwrap()).unwrap();
        }
    }
    let auto = parse(Some(&weather()), None, None, "").unwrap().unwrap();
    assert!(auto.grammar().is_none());
}

#[test]
fn outputs_parse_into_calls_by_format() {
    let hermes = "Sure.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>\n\
                  <tool_call>\n{\"name\": \"g\", \"arguments\": {}}\n</tool_call>";
    let (content, calls) = parse_output(hermes, ToolFormat::Hermes);
    assert_eq!(content.as_deref(), Some("Sure."));
    assert_eq!(calls.len(), 2);
    assert_eq!(
        (calls[0].name.as_str(), calls[0].arguments.as_str()),
        ("f", "{\"x\":1}")
    );
    let (_, calls) = parse_output(
        "{\"name\": \"f\", \"parameters\": {\"a\": \"b\"}}",
        ToolFormat::Llama3Json,
    );
    assert_eq!(calls[0].arguments, "{\"a\":\"b\"}");
    let (content, calls) = parse_output(
        "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {}}]",
        ToolFormat::Mistral,
    );
    assert_eq!((content, calls.len()), (None, 1));
    // Broken calls stay text.
    let (content, calls) = parse_output("<tool_call>{oops</tool_call>", ToolFormat::Hermes);
    assert_eq!(
        (content.as_deref(), calls.len()),
        (Some("<tool_call>{oops</tool_call>"), 0)
    );
}

#[test]
fn streams_hold_back_a_marker_and_send_calls_at_the_end() {
    let mut s = ToolStream::new(ToolFormat::Hermes);
    let mut content = String::new();
    for piece in [
        "Let me ",
        "check.<tool",
        "_call>\n{\"name\": \"f\", ",
        "\"arguments\": {}}\n</tool_call>",
    ] {
        content.push_str(&s.push(piece));
    }
    let (rest, calls) = s.finish();
    assert_eq!(content + &rest, "Let me check.");
    assert_eq!(calls.len(), 1);
    let mut s = ToolStream::new(ToolFormat::Hermes);
    assert_eq!(s.push("a <tool"), "a ");
    assert_eq!(s.finish(), ("<tool".to_string(), vec![]));
}
