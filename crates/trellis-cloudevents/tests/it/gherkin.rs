//! A reader for the subset of Gherkin that the CloudEvents conformance features use: tags, a
//! `Feature:` with free description, one `Background:`, `Scenario:` and `Scenario Outline:`
//! with `Examples:` tables, `Given`/`When`/`Then`/`And`/`But` steps, `"""` doc strings and `|`
//! tables.
//!
//! Outlines are expanded here, one scenario per examples row, so a runner sees plain steps.
//! Anything outside the subset panics with its line number rather than being skipped, so a
//! newer feature file cannot pass by being half-read.

/// A feature with its outlines expanded.
#[derive(Debug)]
pub(crate) struct Feature {
    pub(crate) background: Vec<Step>,
    pub(crate) scenarios: Vec<Scenario>,
}

#[derive(Debug, Clone)]
pub(crate) struct Scenario {
    pub(crate) name: String,
    pub(crate) steps: Vec<Step>,
}

#[derive(Debug, Clone)]
pub(crate) struct Step {
    /// The step text after its keyword, such as `an HTTP request`.
    pub(crate) text: String,
    /// The `"""` block under the step, with the block's indentation removed.
    pub(crate) doc_string: Option<String>,
    /// The `|` table under the step, one `Vec` of trimmed cells per row, header row first.
    pub(crate) table: Vec<Vec<String>>,
}

const STEP_KEYWORDS: [&str; 5] = ["Given ", "When ", "Then ", "And ", "But "];

pub(crate) fn parse(source: &str) -> Feature {
    let mut background = Vec::new();
    let mut outlines: Vec<Outline> = Vec::new();
    let mut section = Section::Preamble;
    let mut lines = source.lines().enumerate();

    while let Some((line_idx, line)) = lines.next() {
        let line_no = line_idx + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if trimmed == "\"\"\"" {
            let indent = line.len() - line.trim_start().len();
            let doc_string = read_doc_string(&mut lines, indent, line_no);
            let step = current_step(&mut section, &mut background, &mut outlines, line_no);
            step.doc_string = Some(doc_string);
            continue;
        }
        if trimmed.starts_with('|') {
            let row = table_row(trimmed, line_no);
            if let Section::Examples = section {
                let outline = outlines
                    .last_mut()
                    .expect("Examples: belongs to a scenario");
                outline.examples.push(row);
            } else {
                current_step(&mut section, &mut background, &mut outlines, line_no)
                    .table
                    .push(row);
            }
            continue;
        }
        if trimmed.starts_with('@') {
            continue;
        }
        if trimmed.starts_with("Feature:") {
            section = Section::Description;
            continue;
        }
        if trimmed == "Background:" {
            section = Section::Background;
            continue;
        }
        if let Some(name) = trimmed
            .strip_prefix("Scenario Outline:")
            .or_else(|| trimmed.strip_prefix("Scenario:"))
        {
            outlines.push(Outline {
                template: Scenario {
                    name: name.trim().to_owned(),
                    steps: Vec::new(),
                },
                is_outline: trimmed.starts_with("Scenario Outline:"),
                examples: Vec::new(),
            });
            section = Section::Scenario;
            continue;
        }
        if trimmed == "Examples:" {
            section = Section::Examples;
            continue;
        }
        if let Some(text) = STEP_KEYWORDS
            .iter()
            .find_map(|keyword| trimmed.strip_prefix(keyword))
        {
            let step = Step {
                text: text.trim().to_owned(),
                doc_string: None,
                table: Vec::new(),
            };
            match section {
                Section::Background => background.push(step),
                Section::Scenario => outlines
                    .last_mut()
                    .expect("in a scenario")
                    .template
                    .steps
                    .push(step),
                _ => panic!("line {line_no}: step outside a background or scenario: {trimmed}"),
            }
            continue;
        }
        if let Section::Description = section {
            continue;
        }
        panic!("line {line_no}: not in the Gherkin subset this reader supports: {trimmed}");
    }

    let scenarios = outlines.into_iter().flat_map(Outline::expand).collect();
    Feature {
        background,
        scenarios,
    }
}

#[derive(Debug, Clone, Copy)]
enum Section {
    Preamble,
    Description,
    Background,
    Scenario,
    Examples,
}

#[derive(Debug)]
struct Outline {
    template: Scenario,
    is_outline: bool,
    /// Header row first.
    examples: Vec<Vec<String>>,
}

impl Outline {
    fn expand(self) -> Vec<Scenario> {
        if !self.is_outline {
            assert!(
                self.examples.is_empty(),
                "scenario {:?} has Examples but is not an outline",
                self.template.name
            );
            return vec![self.template];
        }
        let (header, rows) = self
            .examples
            .split_first()
            .unwrap_or_else(|| panic!("outline {:?} has no Examples table", self.template.name));
        assert!(
            !rows.is_empty(),
            "outline {:?} has no examples rows",
            self.template.name
        );
        rows.iter()
            .map(|row| {
                let fill = |text: &str| {
                    header
                        .iter()
                        .zip(row)
                        .fold(text.to_owned(), |text, (name, value)| {
                            text.replace(&format!("<{name}>"), value)
                        })
                };
                Scenario {
                    name: fill(&self.template.name),
                    steps: self
                        .template
                        .steps
                        .iter()
                        .map(|step| Step {
                            text: fill(&step.text),
                            doc_string: step.doc_string.as_deref().map(fill),
                            table: step
                                .table
                                .iter()
                                .map(|cells| cells.iter().map(|cell| fill(cell)).collect())
                                .collect(),
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

fn current_step<'a>(
    section: &mut Section,
    background: &'a mut [Step],
    outlines: &'a mut [Outline],
    line_no: usize,
) -> &'a mut Step {
    let step = match section {
        Section::Background => background.last_mut(),
        Section::Scenario => outlines
            .last_mut()
            .and_then(|outline| outline.template.steps.last_mut()),
        _ => None,
    };
    step.unwrap_or_else(|| panic!("line {line_no}: a doc string or table must follow a step"))
}

/// Reads doc-string lines up to the closing `"""`, removing up to `indent` leading spaces from
/// each, as Gherkin does with the indentation of the opening delimiter.
fn read_doc_string<'a>(
    lines: &mut impl Iterator<Item = (usize, &'a str)>,
    indent: usize,
    line_no: usize,
) -> String {
    let mut content = Vec::new();
    for (_, line) in lines {
        if line.trim() == "\"\"\"" {
            return content.join("\n");
        }
        let n_spaces = line.len() - line.trim_start_matches(' ').len();
        content.push(&line[n_spaces.min(indent)..]);
    }
    panic!("line {line_no}: doc string is not closed");
}

fn table_row(line: &str, line_no: usize) -> Vec<String> {
    let inner = line
        .strip_prefix('|')
        .and_then(|rest| rest.strip_suffix('|'))
        .unwrap_or_else(|| panic!("line {line_no}: a table row starts and ends with |"));
    inner
        .split('|')
        .map(|cell| cell.trim().to_owned())
        .collect()
}
