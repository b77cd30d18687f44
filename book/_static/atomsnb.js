/* The page's contents behind the article header's button (issue 17). pydata-sphinx-theme opens its "On this page"
   dialog from the first `.secondary-toggle` of the page, the one in its own top header, which sphinx-book-theme does
   not show; the button the reader sees, in the article header, did nothing. It now forwards its click to that one. */
document.addEventListener("DOMContentLoaded", () => {
  const theme = document.querySelector(".secondary-toggle");
  document.querySelectorAll(".bd-header-article .secondary-toggle").forEach((button) => {
    if (theme && button !== theme) {
      button.addEventListener("click", (event) => {
        event.preventDefault();
        event.stopPropagation();
        theme.click();
      });
    }
  });
});
