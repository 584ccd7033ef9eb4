//! Templates that grow a value without end fail with the memory-budget error instead of
//! allocating; the filters that pay first still give the built-ins' results.

use super::super::chat_template::{ChatMessage, ChatTemplate};
use minijinja::syntax::SyntaxConfig;
use minijinja::Environment;

/// A namespace holding a string and one holding a list that holds itself twice, 60 levels deep
/// (120 list slots that print as 2^60 items).
const NS: &str = "{% set ns = namespace(s='x') %}";
const NESTED: &str = "{% set ns = namespace(l=['x']) %}{% for i in range(60) %}\
                      {% set ns.l = [ns.l, ns.l] %}{% endfor %}";

/// Each way a template can build a value far larger than the instructions it runs.
const GROWING: &[(&str, &str, &str)] = &[
    ("namespace ~", NS, "{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"),
    ("namespace +", NS, "{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}{% endfor %}"),
    ("string *", NS, "{% for i in range(100) %}{% set ns.s = ns.s * 2 %}{% endfor %}"),
    (
        "list +",
        "{% set ns = namespace(l=[1]) %}",
        "{% for i in range(100) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|length }}",
    ),
    ("join doubling", NS, "{% for i in range(100) %}{% set ns.s = [ns.s, ns.s]|join %}{% endfor %}"),
    ("join of copies", "{% set s = 'x' * 1000000 %}", "{{ ([s] * 100000)|join|length }}"),
    ("str.join", "{% set s = 'x' * 1000000 %}", "{{ ''.join([s] * 100000)|length }}"),
    ("replace", NS, "{% for i in range(100) %}{% set ns.s = ns.s|replace('x', 'xx') %}{% endfor %}"),
    ("format", NS, "{% for i in range(100) %}{% set ns.s = '%s%s'|format(ns.s, ns.s) %}{% endfor %}"),
    ("format *args", "{% set s = 'x' * 1000000 %}", "{{ ('%s' * 100000)|format(*([s] * 100000)) }}"),
    ("str.format", "{% set s = 'x' * 1000000 %}", "{{ ('{0}' * 100000).format(s)|length }}"),
    (
        "macro recursion",
        "{% macro grow(s, n) %}{% if n > 0 %}{{ grow(s ~ s, n - 1) }}{% endif %}{% endmacro %}",
        "{{ grow('x', 100) }}",
    ),
    (
        "caller capture",
        "{% macro twice() %}{% set c = caller() %}{{ c ~ c }}{% endmacro %}{% set ns = namespace(s='x') %}",
        "{% for i in range(100) %}{% set ns.s %}{% call twice() %}{{ ns.s }}{% endcall %}{% endset %}{% endfor %}",
    ),
    ("nested |string", NESTED, "{{ (ns.l|string)|length }}"),
    ("nested ~", NESTED, "{{ (ns.l ~ '')|length }}"),
    ("nested captured", NESTED, "{% set c %}{{ ns.l }}{% endset %}{{ c|length }}"),
    ("nested |tojson", NESTED, "{{ (ns.l|tojson(sort_keys=true))|length }}"),
    ("nested |join", NESTED, "{{ (ns.l|join)|length }}"),
    ("nested |pprint", NESTED, "{{ (ns.l|pprint)|length }}"),
    ("nested str.format", NESTED, "{{ '{}'.format(ns.l)|length }}"),
    ("split", "{% set s = 'x,' * 30000000 %}", "{{ s.split(',')|length }}"),
    ("escape", "{% set s = '\"' * 60000000 %}", "{{ (s|e)|length }}"),
    ("sum of strings", "{% set s = 'x' * 1000 %}", "{{ ([s] * 100000)|sum(start='')|length }}"),
    ("sum of lists", "", "{{ ([[1]] * 200000)|sum(start=[])|length }}"),
    ("nested ==", NESTED, "{% set m = [ns.l, 1] %}{{ [ns.l, 0] == m }}"),
];

#[test]
fn growing_values_fail_with_the_memory_budget_error() {
    for (name, setup, body) in GROWING {
        let template = ChatTemplate::new(&format!("{setup}{body}"), None, None).expect(name);
        let e = template.render(&[], true).unwrap_err().to_string();
        assert!(e.contains("memory budget of 128 MiB"), "{name}: {e}");
    }
}

/// The template that failed renders the next conversation as if nothing had happened.
#[test]
fn a_failed_render_leaves_the_template_usable() {
    let source = "{% set ns = namespace(s='x') %}{% for m in messages %}\
                  {% if m.content == 'grow' %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}\
                  {% endfor %}{% endif %}{{ m.role }}: {{ m.content }}\n{% endfor %}";
    let template = ChatTemplate::new(source, None, None).unwrap();
    let e = template.render(&[ChatMessage::new("user", "grow")], true);
    assert!(e.unwrap_err().to_string().contains("memory budget"));
    let hi = template.render(&[ChatMessage::new("user", "hi")], true);
    assert_eq!(hi.unwrap(), "user: hi\n");
}

/// What minijinja renders without the paying filters: the same settings, the built-ins.
fn unbudgeted(source: &str) -> String {
    let mut env = Environment::new();
    let syntax = SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .unwrap();
    env.set_syntax(syntax);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.render_str(source, minijinja::context! {}).unwrap()
}

#[test]
fn paying_filters_render_what_the_builtins_render() {
    let source = "{% set l = ['a', 1, none, [2, 'b'], {'k': 'v'}] %}\
        {{ l|join(', ') }}|{{ [{'n': 'x'}, {'n': 'y'}]|join('-', attribute='n') }}|\
        {{ l|string }}|{{ l|pprint }}|{{ '%s=%d %5.2f'|format('a', 3, 2.5) }}|\
        {{ '%(a)s-%(a)s'|format({'a': 'b'}) }}|{{ 'a b  c'|split|list }}|\
        {{ 'a,b,,c'|split(',', 1)|list }}|{{ '<a href=\"x\">&\\'/'|e }}|{{ 1|e }}|\
        {{ '-'.join(['a', 'b', 3]) }}|{{ '{} {x} {}'.format('a', 'c', x='b') }}|\
        {{ 'a b\\nc'.split() }}|{{ 'a,b'.split(',') }}|{{ 'a\\nb\\r\\nc'.splitlines() }}|\
        {{ ' x '.strip() }}|{{ [{'n': 'x'}, {'n': 'y'}]|map(attribute='n')|join('-') }}|\
        {{ ['b', 'a']|reverse|join }}|{{ [1, 0, 2]|select|join(',') }}|\
        {{ ','.join(['p', 'q']|map('upper')) }}|{{ range(3)|join }}|{{ ['x']|map('upper')|string }}|\
        {{ [1, 2.5]|sum }}|{{ ['a', 'b']|sum(start='') }}|{{ [[1], [2]]|sum(start=[]) }}|\
        {{ [{'n': 'a'}]|sum(attribute='n', start='') }}|{{ [[1, 'a']] == [[1, 'a']] }}";
    let template = ChatTemplate::new(source, None, None).unwrap();
    assert_eq!(template.render(&[], true).unwrap(), unbudgeted(source));
}
