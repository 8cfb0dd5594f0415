"""What the offline chat model says: one deterministic reply per agent role.

The role comes from the system prompt ("You are FASTAPI_EXPERT, ...", see
`catalog.system_prompt`), the subject from the user's last request. Lines under
a "Tool findings:" heading in the system prompt (which comes last) are quoted
back, the way a real model reports what its tools found; a "Human feedback on
the plan:" line is acknowledged.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable
from typing import Final

__all__ = ["FEEDBACK_HEADING", "FINDINGS_HEADING", "agent_from_prompt", "compose_reply", "tokenize"]

FINDINGS_HEADING: Final = "Tool findings:"
FEEDBACK_HEADING: Final = "Human feedback on the plan:"
_FEEDBACK = re.compile(re.escape(FEEDBACK_HEADING) + r"[ \t]*(.+)")
_ROLE = re.compile(r"\bYou are ([A-Z][A-Z_]+)\b")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_STOPWORDS: Final = frozenset(
    "a an and the to of for in on with me my our us i we you please help can could would "
    "write create make build generate give show some that this it is are be code function "
    "python script program implement using use how what from into by about all".split()
)
_TOKEN = re.compile(r"\s*\S+|\s+")


def tokenize(text: str) -> list[str]:
    """Word-sized pieces of `text` (each with its leading space) that join back to it."""
    return _TOKEN.findall(text)


def agent_from_prompt(system: str) -> str | None:
    """The agent named by a system prompt's "You are NAME", if any."""
    match = _ROLE.search(system)
    return match.group(1) if match else None


def compose_reply(system: str, request: str) -> str:
    """The reply of the agent the system prompt names to the user's request."""
    agent = agent_from_prompt(system)
    topic = _topic(request)
    reply = _REPLIES.get(agent or "", _generic)(topic, request)
    feedback = _FEEDBACK.search(system)
    if feedback:
        reply = f"Noted your feedback: {feedback.group(1).strip()}\n\n{reply}"
    findings = _findings(system)
    if findings:
        reply += "\n\nWhat my tools found:\n" + "\n".join(f"- {line}" for line in findings)
    prefix = f"{agent}: " if agent else ""
    return prefix + reply


def _topic(request: str) -> str:
    first = next((line.strip() for line in request.splitlines() if line.strip()), "")
    clean = re.sub(r"[`\"'\\]", "", first).rstrip(".:!?")
    return (clean[:77] + "...") if len(clean) > 80 else (clean or "your request")


def _identifier(request: str) -> str:
    words = [w.lower() for w in _WORD.findall(request) if w.lower() not in _STOPWORDS]
    name = "_".join(words[:3]) or "solve_task"
    return f"{name}_task" if keyword.iskeyword(name) or keyword.issoftkeyword(name) else name


def _findings(system: str) -> list[str]:
    _, found, rest = system.partition(FINDINGS_HEADING)
    if not found:
        return []
    return [line.strip().lstrip("- ") for line in rest.splitlines() if line.strip()]


def _fence(code: str, language: str = "python") -> str:
    return f"```{language}\n{code.strip()}\n```"


def _code_generator(topic: str, request: str) -> str:
    name = _identifier(request)
    code = f'''
def {name}(items: list[str]) -> list[str]:
    """{topic}."""
    result: list[str] = []
    for item in items:
        cleaned = item.strip()
        if cleaned:
            result.append(cleaned)
    return result


if __name__ == "__main__":
    print({name}(["  first ", "", "second"]))
'''
    return f"Here is a first implementation for {topic!r}:\n\n{_fence(code)}"


def _fastapi(topic: str, request: str) -> str:
    code = f'''
from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI(title="{topic}")


class Item(BaseModel):
    name: str
    price: float


@app.get("/health")
async def health() -> dict[str, str]:
    return {{"status": "ok"}}


@app.post("/items")
async def create_item(item: Item) -> Item:
    return item
'''
    return (
        f"For {topic!r}, start from a small FastAPI app with typed request bodies:\n\n"
        f"{_fence(code)}\n\nRun it with `uvicorn main:app --reload` and open /docs."
    )


def _nextjs(topic: str, request: str) -> str:
    code = f"""
// app/page.tsx
export default async function Page() {{
  const res = await fetch("http://localhost:8000/items", {{ cache: "no-store" }});
  const items: {{ name: string }}[] = await res.json();
  return (
    <main>
      <h1>{topic}</h1>
      <ul>{{items.map((item) => <li key={{item.name}}>{{item.name}}</li>)}}</ul>
    </main>
  );
}}
"""
    return f"With the Next.js App Router, {topic!r} starts as a server component:\n\n" + _fence(
        code, "tsx"
    )


def _pydantic(topic: str, request: str) -> str:
    code = """
from pydantic import BaseModel, Field, field_validator


class User(BaseModel):
    name: str = Field(min_length=1)
    email: str
    age: int = Field(ge=0)

    @field_validator("email")
    @classmethod
    def email_has_at(cls, value: str) -> str:
        if "@" not in value:
            raise ValueError("email must contain @")
        return value.lower()
"""
    return f"For {topic!r}, declare the shape once and let Pydantic validate it:\n\n" + _fence(code)


def _code_reviewer(topic: str, request: str) -> str:
    return (
        f"I reviewed the code in {topic!r}. I compiled each snippet; "
        "check naming, error handling and tests once it compiles cleanly."
    )


def _standards(topic: str, request: str) -> str:
    return (
        f"I checked {topic!r} against our standards: lines of at most 100 characters "
        "and a docstring on every public function and class."
    )


def _trd(topic: str, request: str) -> str:
    sentences = [s.strip() for s in re.split(r"[.;\n]+", request) if s.strip()]
    lines = [
        f"REQ-{n}: The system shall {s[0].lower() + s[1:]}." for n, s in enumerate(sentences, 1)
    ]
    return "Technical requirements:\n" + "\n".join(lines or ["REQ-1: (no requirement stated)"])


def _implementation(topic: str, request: str) -> str:
    steps = ["Agree on the interface", "Write the code with tests", "Review", "Document"]
    plan = "\n".join(f"{n}. {step}" for n, step in enumerate(steps, 1))
    return f"Implementation plan for {topic!r}:\n{plan}"


def _strategic(topic: str, request: str) -> str:
    return (
        f"Strategy for {topic!r}:\n1. State the goal and how to measure it.\n"
        "2. List two or three options with their costs.\n"
        "3. Pick the cheapest option that meets the goal; revisit after the first milestone.\n"
        "Main risk: building before the requirements are agreed."
    )


def _framework(name: str, snippet: str, language: str = "python") -> Callable[[str, str], str]:
    def reply(topic: str, request: str) -> str:
        return f"In {name}, {topic!r} looks like this:\n\n{_fence(snippet, language)}"

    return reply


_LANGCHAIN = """
from langchain_core.prompts import ChatPromptTemplate

prompt = ChatPromptTemplate.from_messages([("system", "Be brief."), ("user", "{question}")])
chain = prompt | model
answer = chain.invoke({"question": "What is LCEL?"})
"""
_LANGGRAPH = """
from langgraph.graph import StateGraph, MessagesState, START, END

builder = StateGraph(MessagesState)
builder.add_node("agent", call_model)
builder.add_edge(START, "agent")
builder.add_edge("agent", END)
graph = builder.compile(checkpointer=InMemorySaver())
"""
_LLAMAINDEX = """
from llama_index.core import SimpleDirectoryReader, VectorStoreIndex

documents = SimpleDirectoryReader("docs").load_data()
index = VectorStoreIndex.from_documents(documents)
print(index.as_query_engine().query("What does the guide say?"))
"""
_AGNO = """
from agno.agent import Agent

agent = Agent(model=model, tools=[search], instructions="Cite your sources.")
agent.print_response("Summarise today's news")
"""
_CREWAI = """
from crewai import Agent, Crew, Task

writer = Agent(role="Writer", goal="Explain clearly", backstory="A technical writer")
task = Task(description="Write the summary", expected_output="Three paragraphs", agent=writer)
Crew(agents=[writer], tasks=[task]).kickoff()
"""


def _research(topic: str, request: str) -> str:
    return (
        f"On {topic!r}: first pin down the question, then compare the sources that answer it. "
        "Ask a specialist (FastAPI, LangGraph, documentation, ...) by naming the subject."
    )


def _documentation(topic: str, request: str) -> str:
    readme = f"""
# {topic}

## Installation
pip install <package>

## Usage
Explain the one thing a new reader does first.

## Contributing
Run the tests before sending a change.
"""
    return f"A README outline for {topic!r}:\n\n{_fence(readme, 'markdown')}"


def _document_analyzer(topic: str, request: str) -> str:
    words = len(request.split())
    sentences = len([s for s in re.split(r"[.!?]+", request) if s.strip()])
    headings = sum(1 for line in request.splitlines() if line.lstrip().startswith("#"))
    return (
        f"Analysis of the document: {words} words, {sentences} sentences, {headings} headings. "
        "The opening line states the subject; add a summary if the reader needs one."
    )


def _prompt_engineer(topic: str, request: str) -> str:
    prompt = f"""
You are an expert assistant. Task: {topic}.
Think step by step, state assumptions, and answer in at most five bullet points.
If information is missing, ask one clarifying question first.
"""
    return f"A prompt for {topic!r}:\n\n{_fence(prompt, 'text')}"


def _supervisor(topic: str, request: str) -> str:
    return f"I will route {topic!r} to the team that fits it."


def _generic(topic: str, request: str) -> str:
    return f"You asked about {topic!r}. Here is a short answer, offline and deterministic."


_REPLIES: Final[dict[str, Callable[[str, str], str]]] = {
    "SUPERVISOR": _supervisor,
    "IMPLEMENTATION": _implementation,
    "CODE_GENERATOR": _code_generator,
    "CODE_REVIEWER": _code_reviewer,
    "STANDARDS_ENFORCER": _standards,
    "TRD_CONVERTER": _trd,
    "FASTAPI_EXPERT": _fastapi,
    "NEXTJS_EXPERT": _nextjs,
    "PYDANTIC_EXPERT": _pydantic,
    "RESEARCH": _research,
    "STRATEGIC_EXPERT": _strategic,
    "LANGCHAIN_EXPERT": _framework("LangChain", _LANGCHAIN),
    "LANGGRAPH_EXPERT": _framework("LangGraph", _LANGGRAPH),
    "LLAMAINDEX_EXPERT": _framework("LlamaIndex", _LLAMAINDEX),
    "AGNO_EXPERT": _framework("Agno", _AGNO),
    "CREWAI_EXPERT": _framework("CrewAI", _CREWAI),
    "DOCUMENTATION": _documentation,
    "DOCUMENT_ANALYZER": _document_analyzer,
    "PROMPT_ENGINEER": _prompt_engineer,
}
