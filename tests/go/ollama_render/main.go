// Renders an Ollama TEMPLATE the way an Ollama server feeds it, so the tests can compare its text with the
// tokenizer's chat template without an Ollama install (only Go's standard library: nothing to download).
//
// stdin: {"template": "...", "messages": [{"role", "content", "tool_calls"}], "system": "...", "tools": [...]}
// or a JSON array of such objects. stdout: the rendered text for one object; for an array, a JSON array of
// {"text": ...} or {"error": ...}. A render error of a single object exits 1 with the error on stderr.
//
// What is mirrored from Ollama's server (template/template.go, server/routes.go), written here from its
// behaviour: the parse options (missingkey=zero) and functions (json, currentDate, yesterdayDate,
// toTypeScriptType); a Modelfile SYSTEM ("system") put first when the request's first message is not a system
// message; roles lower-cased; consecutive messages of one role (not tool) merged with "\n\n"; .System the
// system messages joined with "\n\n"; .Messages with Role, Content, Thinking, ToolCalls (Arguments print as
// JSON), ToolName, ToolCallID; .Tools with Ollama's field order; .Response empty. A template that never names
// .Messages gets Ollama's legacy data instead (.System, .Prompt, .Response per user turn).
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
)

type args map[string]any

// String is what {{ .Function.Arguments }} prints: JSON, as in Ollama.
func (a args) String() string {
	if a == nil {
		return "{}"
	}
	b, _ := json.Marshal(map[string]any(a))
	return string(b)
}

type callFunction struct {
	Index     int
	Name      string
	Arguments args
}

type toolCall struct {
	ID       string
	Function callFunction
}

type message struct {
	Role       string
	Content    string
	Thinking   string
	ToolCalls  []toolCall
	ToolName   string
	ToolCallID string
}

// propertyType marshals one type as a string and several as a list, as Ollama's does.
type propertyType []string

func (p *propertyType) UnmarshalJSON(b []byte) error {
	var one string
	if json.Unmarshal(b, &one) == nil {
		*p = []string{one}
		return nil
	}
	var many []string
	err := json.Unmarshal(b, &many)
	*p = many
	return err
}

func (p propertyType) MarshalJSON() ([]byte, error) {
	if len(p) == 1 {
		return json.Marshal(p[0])
	}
	return json.Marshal([]string(p))
}

type property struct {
	AnyOf       []property          `json:"anyOf,omitempty"`
	Type        propertyType        `json:"type,omitempty"`
	Items       any                 `json:"items,omitempty"`
	Description string              `json:"description,omitempty"`
	Enum        []any               `json:"enum,omitempty"`
	Properties  map[string]property `json:"properties,omitempty"`
	Required    []string            `json:"required,omitempty"`
}

type parameters struct {
	Type       string              `json:"type"`
	Defs       any                 `json:"$defs,omitempty"`
	Items      any                 `json:"items,omitempty"`
	Required   []string            `json:"required,omitempty"`
	Properties map[string]property `json:"properties"`
}

type function struct {
	Name        string     `json:"name"`
	Description string     `json:"description"`
	Parameters  parameters `json:"parameters"`
}

type tool struct {
	Type     string   `json:"type"`
	Items    any      `json:"items,omitempty"`
	Function function `json:"function"`
}

func (t tool) String() string {
	b, _ := json.Marshal(t)
	return string(b)
}

type tools []tool

func (t tools) String() string {
	b, _ := json.Marshal([]tool(t))
	return string(b)
}

type request struct {
	Template string `json:"template"`
	Messages []struct {
		Role       string `json:"role"`
		Content    string `json:"content"`
		Thinking   string `json:"thinking"`
		ToolName   string `json:"tool_name"`
		ToolCallID string `json:"tool_call_id"`
		ToolCalls  []struct {
			ID       string `json:"id"`
			Function struct {
				Index     int            `json:"index"`
				Name      string         `json:"name"`
				Arguments map[string]any `json:"arguments"`
			} `json:"function"`
		} `json:"tool_calls"`
	} `json:"messages"`
	System string `json:"system"`
	Tools  tools  `json:"tools"`
}

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
	"currentDate":      func(...string) string { return time.Now().Format("2006-01-02") },
	"yesterdayDate":    func(...string) string { return time.Now().AddDate(0, 0, -1).Format("2006-01-02") },
	"toTypeScriptType": func(any) string { return "any" },
}

// messages in the shape a template ranges over, after Ollama's SYSTEM and merging steps, and .System.
func messages(r request) ([]*message, string) {
	var in []message
	for _, m := range r.Messages {
		msg := message{Role: strings.ToLower(m.Role), Content: m.Content, Thinking: m.Thinking,
			ToolName: m.ToolName, ToolCallID: m.ToolCallID}
		for _, c := range m.ToolCalls {
			msg.ToolCalls = append(msg.ToolCalls, toolCall{ID: c.ID, Function: callFunction{
				Index: c.Function.Index, Name: c.Function.Name, Arguments: args(c.Function.Arguments)}})
		}
		in = append(in, msg)
	}
	if r.System != "" && (len(in) == 0 || in[0].Role != "system") {
		in = append([]message{{Role: "system", Content: r.System}}, in...)
	}
	var system []string
	var out []*message
	for i := range in {
		if in[i].Role == "system" {
			system = append(system, in[i].Content)
		}
		if n := len(out); n > 0 && out[n-1].Role == in[i].Role && in[i].Role != "tool" {
			out[n-1].Content += "\n\n" + in[i].Content
			continue
		}
		out = append(out, &in[i])
	}
	return out, strings.Join(system, "\n\n")
}

// names reports whether a template refers to a field or variable called `name` (case-insensitive), as
// Ollama decides between its messages and legacy data.
func names(n parse.Node, name string) bool {
	found := false
	var walk func(parse.Node)
	walk = func(n parse.Node) {
		switch n := n.(type) {
		case *parse.ListNode:
			if n != nil {
				for _, c := range n.Nodes {
					walk(c)
				}
			}
		case *parse.ActionNode:
			walk(n.Pipe)
		case *parse.TemplateNode:
			walk(n.Pipe)
		case *parse.IfNode:
			walk(n.Pipe)
			walk(n.List)
			walk(n.ElseList)
		case *parse.RangeNode:
			walk(n.Pipe)
			walk(n.List)
			walk(n.ElseList)
		case *parse.WithNode:
			walk(n.Pipe)
			walk(n.List)
			walk(n.ElseList)
		case *parse.PipeNode:
			if n != nil {
				for _, c := range n.Cmds {
					for _, a := range c.Args {
						walk(a)
					}
				}
			}
		case *parse.FieldNode:
			for _, id := range n.Ident {
				found = found || strings.EqualFold(id, name)
			}
		case *parse.VariableNode:
			for _, id := range n.Ident {
				found = found || strings.EqualFold(id, name)
			}
		}
	}
	walk(n)
	return found
}

// legacy renders a template without .Messages: one pass per user turn (with the system text before it and
// the answer after it), the last one cut at its .Response.
func legacy(t *template.Template, msgs []*message) (string, error) {
	const cut = "\x00response\x00"
	var b bytes.Buffer
	system, prompt, response := "", "", ""
	flush := func(last bool) error {
		data := map[string]any{"System": system, "Prompt": prompt, "Response": response}
		if last {
			data["Response"] = cut
		}
		var one bytes.Buffer
		if err := t.Execute(&one, data); err != nil {
			return err
		}
		text := one.String()
		if last {
			text, _, _ = strings.Cut(text, cut)
		}
		b.WriteString(text)
		system, prompt, response = "", "", ""
		return nil
	}
	for _, m := range msgs {
		switch {
		case m.Role == "system" && (prompt != "" || response != ""), m.Role == "user" && response != "":
			if err := flush(false); err != nil {
				return "", err
			}
		}
		switch m.Role {
		case "system":
			system = m.Content
		case "user":
			prompt = m.Content
		case "assistant":
			response = m.Content
		}
	}
	err := flush(true)
	return b.String(), err
}

func render(r request) (string, error) {
	t, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(r.Template)
	if err != nil {
		return "", err
	}
	msgs, system := messages(r)
	if !names(t.Tree.Root, "messages") {
		if !names(t.Tree.Root, "response") { // Ollama appends {{ .Response }} to such a template
			withResponse := r.Template + "{{ .Response }}"
			if t, err = template.New("").Option("missingkey=zero").Funcs(funcs).Parse(withResponse); err != nil {
				return "", err
			}
		}
		return legacy(t, msgs)
	}
	var b bytes.Buffer
	err = t.Execute(&b, map[string]any{"System": system, "Messages": msgs, "Tools": r.Tools, "Response": "",
		"Think": false, "ThinkLevel": "", "IsThinkSet": false})
	return b.String(), err
}

func main() {
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if trimmed := bytes.TrimSpace(in); len(trimmed) > 0 && trimmed[0] == '[' {
		var batch []request
		if err := json.Unmarshal(in, &batch); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		out := make([]map[string]string, len(batch))
		for i, r := range batch {
			if text, err := render(r); err != nil {
				out[i] = map[string]string{"error": err.Error()}
			} else {
				out[i] = map[string]string{"text": text}
			}
		}
		enc, _ := json.Marshal(out)
		os.Stdout.Write(enc)
		return
	}
	var r request
	if err := json.Unmarshal(in, &r); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	text, err := render(r)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Stdout.WriteString(text)
}
