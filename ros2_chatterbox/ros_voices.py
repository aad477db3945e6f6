"""Voice management over ROS: `voices/list`, `voices/add` (a recording on the node's machine), `voices/delete`; and
`languages/list`, what the loaded model speaks (the other half of "who speaks, in what").

The core validates (the same checks as an HTTP upload); these services only translate. They live as long as the
node and answer "not configured" while no voice library is loaded. The node hands in how to reach its core.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, ContextManager, Optional

from ros2_chatterbox.srv import AddVoice, DeleteVoice, ListLanguages, ListVoices

from .core import RequestError, SpeechCore

CoreAccess = Callable[[], ContextManager[Optional[SpeechCore]]]  # the configured core while the block runs, or None

log = logging.getLogger(__name__)


class VoiceServices:
    def __init__(self, node: Any, configured_core: CoreAccess, state_label: Callable[[], str],
                 fast_group: Any, blocking_group: Any):
        self._core = configured_core
        self._state_label = state_label
        node.create_service(ListVoices, "voices/list", self._on_list, callback_group=fast_group)
        node.create_service(AddVoice, "voices/add", self._on_add, callback_group=blocking_group)  # reads a file
        node.create_service(DeleteVoice, "voices/delete", self._on_delete, callback_group=fast_group)
        node.create_service(ListLanguages, "languages/list", self._on_languages, callback_group=fast_group)

    def _answer(self, response, action: Callable[[SpeechCore], None]):
        """Run `action` on the core; a refusal or failure becomes success=false with the reason (never a raise
        into the executor)."""
        try:
            with self._core() as core:
                if core is None:
                    response.success = False
                    response.message = (f"the node is not configured (state: {self._state_label()}): "
                                        f"configure it first")
                    return response
                action(core)
                response.success = True
        except RequestError as exc:
            response.success, response.message = False, exc.message
        except Exception as exc:  # noqa: BLE001 - logged, answered
            log.error(f"voice service failed: {type(exc).__name__}: {exc}")
            response.success, response.message = False, f"internal error: {type(exc).__name__}: {exc}"
        return response

    def _on_list(self, request: ListVoices.Request, response: ListVoices.Response) -> ListVoices.Response:
        def run(core: SpeechCore) -> None:
            voices = core.list_voices()
            response.names = [v.name for v in voices]
            response.languages = [v.language for v in voices]
            response.default_voice = core.default_voice
            response.can_clone = core.can_clone
            response.message = f"{len(response.names)} voice(s)"
        return self._answer(response, run)

    def _on_add(self, request: AddVoice.Request, response: AddVoice.Response) -> AddVoice.Response:
        def run(core: SpeechCore) -> None:
            added = core.add_voice_file(request.name, request.path, request.overwrite, language=request.language)
            response.name, response.duration, response.message = added.name, float(added.duration), added.message
        return self._answer(response, run)

    def _on_delete(self, request: DeleteVoice.Request, response: DeleteVoice.Response) -> DeleteVoice.Response:
        def run(core: SpeechCore) -> None:
            response.message = f"voice '{core.delete_voice(request.name)}' deleted"
        return self._answer(response, run)

    def _on_languages(self, request: ListLanguages.Request,
                      response: ListLanguages.Response) -> ListLanguages.Response:
        def run(core: SpeechCore) -> None:
            found = core.list_languages()
            response.codes = [lang.code for lang in found]
            response.names = [lang.name for lang in found]
            response.default_language = core.default_language
            response.model = core.model_id
            response.message = f"{len(found)} language(s)"
        return self._answer(response, run)
