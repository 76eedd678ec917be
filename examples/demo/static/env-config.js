// Runtime configuration of the frontend, served by pmd itself at /env-config.js
// ([static env-config] in conf/demo.ini), so it can change without a new image.
window.ENV = {
  API_BASE_URL: "/api/v1",
  ENVIRONMENT: "demo"
};
