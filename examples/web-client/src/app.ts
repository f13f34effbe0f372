// The todo page: Better Auth for the session, the Todo API (another origin) for the tasks.
import type { components } from "./api/schema";
import { SignedOut, authClient, forgetToken, idempotencyKey, ok, todoApi } from "./todo-api";

type Task = components["schemas"]["TaskOut"];

const $ = <T extends HTMLElement = HTMLElement>(selector: string) =>
  document.querySelector(selector) as T;
const api = todoApi($<HTMLMetaElement>('meta[name="todo-api"]').content);
let me = ""; // the signed-in user's id, the `user_id` of every path

// The API's operations by their ids in the contract, as this page uses them.
const listTasks = () => ok(api.GET("/api/{user_id}/tasks", { params: { path: { user_id: me } } }));
const createTask = (title: string) =>
  ok(
    api.POST("/api/{user_id}/tasks", {
      params: { path: { user_id: me }, header: idempotencyKey() },
      body: { title },
    }),
  );
const updateTask = (task_id: number, title: string) =>
  ok(
    api.PUT("/api/{user_id}/tasks/{task_id}", {
      params: { path: { user_id: me, task_id } },
      body: { title },
    }),
  );
const toggleTask = (task_id: number) =>
  ok(
    api.PATCH("/api/{user_id}/tasks/{task_id}/complete", {
      params: { path: { user_id: me, task_id }, header: idempotencyKey() },
    }),
  );
const deleteTask = (task_id: number) =>
  ok(api.DELETE("/api/{user_id}/tasks/{task_id}", { params: { path: { user_id: me, task_id } } }));

function showError(error: unknown) {
  const box = $("#error");
  box.textContent = error ? (error instanceof Error ? error.message : String(error)) : "";
  box.hidden = !error;
}

// Every action goes through here: errors are shown to the person, a lost session signs out.
async function attempt(action: () => Promise<void>) {
  try {
    showError(null);
    await action();
  } catch (error) {
    if (error instanceof SignedOut) await showSignedOut();
    showError(error); // ApiError: the API's own sentence; others: Better Auth's or the browser's
  }
}

function taskItem(task: Task): HTMLLIElement {
  const item = document.createElement("li");
  item.dataset.id = String(task.id);
  item.classList.toggle("done", task.completed);

  const done = document.createElement("input");
  done.type = "checkbox";
  done.checked = task.completed;
  done.setAttribute("aria-label", `Done: ${task.title}`);
  done.addEventListener("change", () =>
    attempt(async () => item.replaceWith(taskItem(await toggleTask(task.id)))),
  );

  const title = document.createElement("span");
  title.className = "title";
  title.textContent = task.title;

  const rename = document.createElement("button");
  rename.textContent = "Rename";
  rename.addEventListener("click", () => {
    const field = document.createElement("input");
    field.className = "rename";
    field.value = task.title;
    field.setAttribute("aria-label", `New title for ${task.title}`);
    const save = async () => item.replaceWith(taskItem(await updateTask(task.id, field.value)));
    field.addEventListener("keydown", (event) => {
      if (event.key === "Enter") attempt(save);
      if (event.key === "Escape") item.replaceWith(taskItem(task));
    });
    title.replaceWith(field);
    rename.hidden = true;
    field.focus();
  });

  const remove = document.createElement("button");
  remove.textContent = "Delete";
  remove.addEventListener("click", () =>
    attempt(async () => {
      await deleteTask(task.id);
      item.remove();
      $("#empty").hidden = $("#tasks").children.length > 0;
    }),
  );

  item.append(done, title, rename, remove);
  return item;
}

async function showTasks(user: { id: string; email: string }) {
  me = user.id;
  $("#who").textContent = user.email;
  $("#auth").hidden = true;
  $("#todos").hidden = false;
  const tasks = await listTasks();
  $("#tasks").replaceChildren(...tasks.map(taskItem));
  $("#empty").hidden = tasks.length > 0;
}

async function showSignedOut() {
  forgetToken();
  me = "";
  $("#todos").hidden = true;
  $("#tasks").replaceChildren();
  $("#auth").hidden = false;
}

$<HTMLFormElement>("#auth").addEventListener("submit", (event) => {
  event.preventDefault();
  const formElement = event.target as HTMLFormElement;
  const form = new FormData(formElement);
  const email = String(form.get("email"));
  const password = String(form.get("password"));
  const name = String(form.get("name") || email);
  attempt(async () => {
    const { data, error } =
      (event.submitter as HTMLButtonElement | null)?.value === "sign-up"
        ? await authClient.signUp.email({ email, password, name })
        : await authClient.signIn.email({ email, password });
    if (error) throw new Error(error.message ?? "Could not sign in.");
    formElement.reset();
    await showTasks(data.user);
  });
});

$("#sign-out").addEventListener("click", () =>
  attempt(async () => {
    await authClient.signOut();
    await showSignedOut();
  }),
);

$<HTMLFormElement>("#add").addEventListener("submit", (event) => {
  event.preventDefault();
  const field = $<HTMLInputElement>("#add input[name=title]");
  attempt(async () => {
    const task = await createTask(field.value);
    $("#tasks").append(taskItem(task));
    $("#empty").hidden = true;
    field.value = "";
  });
});

attempt(async () => {
  const { data } = await authClient.getSession();
  if (data?.user) await showTasks(data.user);
  else await showSignedOut();
});
