// The todo page: Better Auth for the session, the Todo API (another origin) for the tasks.
import { SignedOut, api, authClient, forgetToken } from "./todo-api.js";

const API_URL = document.querySelector('meta[name="todo-api"]').content;
const $ = (selector) => document.querySelector(selector);

const tasksApi = {
  list: () => api(API_URL, "GET", "/tasks"),
  add: (title) => api(API_URL, "POST", "/tasks", { body: { title }, idempotent: true }),
  rename: (id, title) => api(API_URL, "PUT", `/tasks/${id}`, { body: { title } }),
  toggle: (id) => api(API_URL, "PATCH", `/tasks/${id}/complete`, { idempotent: true }),
  remove: (id) => api(API_URL, "DELETE", `/tasks/${id}`),
};

function showError(error) {
  const box = $("#error");
  if (!error) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  box.textContent = error.message || String(error);
  box.hidden = false;
}

// Every action goes through here: errors are shown to the person, a lost session signs out.
async function attempt(action) {
  try {
    showError(null);
    await action();
  } catch (error) {
    if (error instanceof SignedOut) await showSignedOut();
    showError(error); // ApiError: the API's own sentence; others: Better Auth's or the browser's
  }
}

function taskItem(task) {
  const item = document.createElement("li");
  item.dataset.id = task.id;
  item.classList.toggle("done", task.completed);

  const done = document.createElement("input");
  done.type = "checkbox";
  done.checked = task.completed;
  done.setAttribute("aria-label", `Done: ${task.title}`);
  done.addEventListener("change", () =>
    attempt(async () => item.replaceWith(taskItem(await tasksApi.toggle(task.id)))),
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
    const save = async () => item.replaceWith(taskItem(await tasksApi.rename(task.id, field.value)));
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
      await tasksApi.remove(task.id);
      item.remove();
      $("#empty").hidden = $("#tasks").children.length > 0;
    }),
  );

  item.append(done, title, rename, remove);
  return item;
}

async function showTasks(user) {
  $("#who").textContent = user.email;
  $("#auth").hidden = true;
  $("#todos").hidden = false;
  const tasks = await tasksApi.list();
  $("#tasks").replaceChildren(...tasks.map(taskItem));
  $("#empty").hidden = tasks.length > 0;
}

async function showSignedOut() {
  forgetToken();
  $("#todos").hidden = true;
  $("#tasks").replaceChildren();
  $("#auth").hidden = false;
}

$("#auth").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const email = form.get("email");
  const password = form.get("password");
  attempt(async () => {
    const { data, error } =
      event.submitter?.value === "sign-up"
        ? await authClient.signUp.email({ email, password, name: form.get("name") || email })
        : await authClient.signIn.email({ email, password });
    if (error) throw new Error(error.message ?? "Could not sign in.");
    event.target.reset();
    await showTasks(data.user);
  });
});

$("#sign-out").addEventListener("click", () =>
  attempt(async () => {
    await authClient.signOut();
    await showSignedOut();
  }),
);

$("#add").addEventListener("submit", (event) => {
  event.preventDefault();
  const field = event.target.elements.title;
  attempt(async () => {
    const task = await tasksApi.add(field.value);
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
