"""Bad input to `data prepare` and the loaders: one line naming file:line or flag, nothing left."""

import gzip
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from conftest import ROOT, write_ncf_dir

from ncf_jax.data import dataset as dataset_lib
from ncf_jax.data import download
from ncf_jax.data import id_maps
from ncf_jax.data import ncf_format
from ncf_jax.data import prepare
from ncf_jax.data import registry
from ncf_jax.errors import DataError

HEADER = 'user,item,time\n'
GOOD_ROWS = ''.join(f'u{u},i{7 * u + k},{k}\n' for u in range(6) for k in range(25))  # 60 items
LAYOUT = prepare.layout_for('csv', user_col='user', item_col='item', time_col='time')


def _prepare(tmp_path, text, layout=LAYOUT, mode='w', **kwargs):
  raw = tmp_path / 'log.csv'
  if mode == 'wb':
    raw.write_bytes(text)
  else:
    raw.write_text(text)
  return prepare.prepare(str(raw), layout, str(tmp_path / 'out'), **kwargs)


# case -> (file text, message after "log.csv")
BAD_FILES = {
    'empty file': ('', ': empty file'),
    'blank file': ('\n\n', ': empty file'),
    'header only': (HEADER, ': no data rows after the header'),
    'missing column': ('person,item,time\nu1,i1,5\n',
                       ":1: no column 'user' in the header; its columns are: 'person', 'item', "
                       "'time'"),
    'no header row': ('1,2,3\n4,5,6\n', ":1: no header row: the first line '1,2,3' looks like "
                                        "data; add a line naming the columns (e.g. 'user')"),
    'separator finds one column': ('user;item;time\nu1;i1;5\n',
                                   ":1: --sep=',' finds one column in the header "
                                   "'user;item;time'; is it ';'?"),
    'column twice': ('user,item,time,user\n', ":1: column 'user' appears 2 times in the header"),
    'short line': (HEADER + GOOD_ROWS + 'u1,i2\n' + GOOD_ROWS,
                   ":152: expected 3 fields separated by ',', found 2"),
    'empty line': (HEADER + 'u1,i1,1\n\nu1,i2,2\n', ':3: empty line'),
    'timestamp not a number': (HEADER + GOOD_ROWS + 'u1,i2,noon\n',
                               ":152: timestamp 'noon' is not a number"),
    'timestamp not an integer': (HEADER + 'u1,i2,1.5\n', ":2: timestamp '1.5' is not an integer"),
    'quoted: timestamp not a number': (HEADER + '"u,1",i1,5\nu2,i2,"5 pm"\n',
                                       ":3: timestamp '5 pm' is not a number"),
    'quoted: short line': (HEADER + '"u,1",i1,5\n"u\n2",i1\n',
                           ":3: expected 3 fields separated by ',', found 2"),
    'quoted: newline in an id': (HEADER + GOOD_ROWS + '"u\n1",i1,5\n',
                                 ":152: user id 'u\\n1' contains a tab or a line break"),
    'quoted: unterminated quote': (HEADER + 'u1,"i1,5\n', ':2: unexpected end of data'),
    'empty id': (HEADER + GOOD_ROWS + ',i1,5\n', ":152: user id '' is empty"),
    'no user with enough items': (HEADER + 'u1,i1,5\n', ': no user has 20 or more distinct '
                                                        'items (see --min_user_interactions)'),
    'too few items left for negatives': (HEADER + GOOD_ROWS,
                                         ":2: user 'u0' interacted with 25 of the 60 items, "
                                         "leaving fewer than --test_negatives=40 to draw "
                                         "negatives from"),
}


@pytest.mark.parametrize('case', sorted(BAD_FILES))
def test_bad_file_is_one_line_naming_file_and_line(tmp_path, case):
  text, expected = BAD_FILES[case]
  protocol = prepare.Protocol(test_negatives=40 if 'negatives' in case else 99)
  with pytest.raises(DataError) as info:
    _prepare(tmp_path, text, protocol=protocol)
  assert str(info.value) == f'{tmp_path / "log.csv"}{expected}'
  assert not os.path.exists(tmp_path / 'out')  # nothing half-written, no empty folder


def test_tab_inside_a_quoted_tsv_id(tmp_path):
  layout = prepare.layout_for('tsv', user_col='user', item_col='item')
  with pytest.raises(DataError, match=r"log.csv:3: item id 'a\\tb' contains a tab"):
    _prepare(tmp_path, 'user\titem\nu1\ti1\nu1\t"a\tb"\n', layout=layout)


def test_undecodable_id_names_its_line(tmp_path):
  text = (HEADER + GOOD_ROWS).encode() + b'u9,caf\xe9,5\n'
  with pytest.raises(DataError, match=r"log.csv:152: item id b'caf\\xe9' is not valid text .*"
                                      r"--encoding"):
    _prepare(tmp_path, text, mode='wb')
  latin = prepare.layout_for('csv', user_col='user', item_col='item', encoding='latin-1')
  with pytest.raises(DataError, match='no user has 20'):  # decodes: then the protocol speaks
    _prepare(tmp_path, HEADER.encode() + b'u9,caf\xe9,5\n', layout=latin, mode='wb')


def test_not_gzip_after_all(tmp_path):
  data = gzip.compress((HEADER + GOOD_ROWS).encode())
  with pytest.raises(DataError, match=r'log.csv: not a valid gzip file'):
    _prepare(tmp_path, data[:len(data) // 2], mode='wb')


@pytest.mark.parametrize('flags,expected', [
    (dict(fmt='csv', item_col='i'), '--format=csv needs --user_col'),
    (dict(fmt='ml-1m', user_col='u'), '--user_col: --format=ml-1m has fixed columns'),
    (dict(fmt='csv', user_col='a', item_col='a'), 'name one column twice'),
    (dict(fmt='csv', user_col='u', item_col='i', sep='::'), "--sep='::': must be one character"),
    (dict(fmt='csv', user_col='u', item_col='i', encoding='klingon'),
     '--encoding=klingon: unknown encoding'),
    (dict(fmt='xml'), '--format=xml: unknown format'),
])
def test_flag_errors_name_the_flag(tmp_path, flags, expected):
  (tmp_path / 'log.csv').write_text('u,i\na,b\n')
  with pytest.raises(DataError, match=expected):
    layout = prepare.layout_for(flags.pop('fmt'), **flags)
    prepare.prepare(str(tmp_path / 'log.csv'), layout, str(tmp_path / 'out'))


def test_min_rating_needs_a_rating_column(tmp_path):
  with pytest.raises(DataError, match='--min_rating needs --rating_col'):
    _prepare(tmp_path, HEADER + GOOD_ROWS, protocol=prepare.Protocol(min_rating=3))


def test_out_is_a_file(tmp_path):
  (tmp_path / 'out').write_text('precious')
  with pytest.raises(DataError, match=r'--out=.*out: exists and is not a directory$'):
    _prepare(tmp_path, HEADER + GOOD_ROWS, protocol=prepare.Protocol(test_negatives=5))
  assert (tmp_path / 'out').read_text() == 'precious'


def test_a_failed_write_leaves_nothing_new(tmp_path):
  (tmp_path / 'out' / 'log.test.rating').mkdir(parents=True)  # a folder where a file goes
  with pytest.raises(DataError, match=r'log.test.rating: cannot write \(Is a directory\)$'):
    _prepare(tmp_path, HEADER + GOOD_ROWS, protocol=prepare.Protocol(test_negatives=5))
  assert os.listdir(tmp_path / 'out') == ['log.test.rating']


def test_stale_negatives_of_the_other_format_go(tmp_path):
  _prepare(tmp_path, HEADER + GOOD_ROWS, protocol=prepare.Protocol(test_negatives=5),
           negatives_format='npy')
  assert os.path.exists(tmp_path / 'out' / 'log.test.negative.npy')
  _prepare(tmp_path, HEADER + GOOD_ROWS, protocol=prepare.Protocol(test_negatives=5))
  assert not os.path.exists(tmp_path / 'out' / 'log.test.negative.npy')
  assert dataset_lib.load_ncf_dir(str(tmp_path / 'out'), 'log').test.negatives.shape == (6, 5)


# ------------------------------------------------------------ as a user without root


@pytest.fixture
def shared_dir():
  """A folder that an unprivileged user can enter (pytest's tmp_path is root-only)."""
  path = tempfile.mkdtemp(prefix='ncf_perm_')
  os.chmod(path, 0o755)
  yield path
  shutil.rmtree(path)


_AS_NOBODY = '''
import os, sys
from ncf_jax import cli  # imported while files under /root are readable
from ncf_jax.data import __main__ as data_main
if os.geteuid() == 0:
  os.setgroups([])
  os.setgid(65534)
  os.setuid(65534)
sys.argv = ['ncf_jax.data'] + sys.argv[1:]
cli.run(data_main.main, max_args=1)
'''


def _run_unprivileged(*args):
  return subprocess.run([sys.executable, '-c', _AS_NOBODY, *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


def _last_error(result) -> str:
  assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr
  return result.stderr.strip().splitlines()[-1]


def test_permission_errors_as_a_user_without_root(shared_dir):
  raw = os.path.join(shared_dir, 'log.csv')
  with open(raw, 'w') as f:
    f.write(HEADER + GOOD_ROWS)
  locked = os.path.join(shared_dir, 'locked')
  os.mkdir(locked, 0o700)
  os.chmod(raw, 0o600)
  common = ['prepare', '--format=csv', '--user_col=user', '--item_col=item', '--test_negatives=5']

  os.mkdir(os.path.join(shared_dir, 'out'), 0o777)
  os.chmod(os.path.join(shared_dir, 'out'), 0o777)  # whatever the umask
  result = _run_unprivileged(*common, f'--raw={raw}', f'--out={shared_dir}/out')
  assert _last_error(result) == f'error: {raw}: cannot read (Permission denied)'
  os.chmod(raw, 0o644)
  result = _run_unprivileged(*common, f'--raw={raw}', f'--out={shared_dir}/new/out')
  assert _last_error(result) == (f'error: --out={shared_dir}/new/out: cannot write in '
                                 f'{shared_dir} (Permission denied)')
  result = _run_unprivileged('stats', f'--data_dir={locked}')
  assert _last_error(result) == f'error: {locked}: cannot read (Permission denied)'
  assert sorted(os.listdir(shared_dir)) == ['locked', 'log.csv', 'out']
  assert os.listdir(os.path.join(shared_dir, 'out')) == []


# ------------------------------------------------------------ loading NCF files


def _data(**fields):
  return registry.DataSettings(**dict(dict(dataset='ml-1m'), **fields))


def test_a_named_data_dir_must_exist_and_is_never_downloaded_into(tmp_path, monkeypatch):
  def no_download(*args, **kwargs):
    raise AssertionError('downloaded')
  monkeypatch.setattr(download, 'fetch', no_download)
  with pytest.raises(DataError, match=r'/nothing: no such directory$'):
    registry.load_dataset(_data(data_dir=str(tmp_path / 'nothing')))
  assert os.listdir(tmp_path) == []
  (tmp_path / 'file').write_text('x')
  with pytest.raises(DataError, match=r'/file: is a file, not a directory of NCF files$'):
    registry.load_dataset(_data(data_dir=str(tmp_path / 'file')))
  with pytest.raises(DataError, match=r'no ml-1m.train.rating / .test.rating / .test.negative'):
    registry.load_dataset(_data(data_dir=str(tmp_path)))


def test_missing_ncf_data_dir_root_is_an_error(tmp_path, monkeypatch):
  monkeypatch.setenv('NCF_DATA_DIR', str(tmp_path / 'typo'))
  with pytest.raises(DataError, match=r'\$NCF_DATA_DIR=.*typo: no such directory$'):
    registry.load_dataset(_data())
  assert os.listdir(tmp_path) == []


def _toy(directory, train='0\t0\t1\t5\n0\t1\t1\t6\n1\t1\t1\t7\n1\t2\t1\t8\n',
         test='0\t2\t1\t0\n1\t3\t1\t0\n'):
  (directory / 'toy.train.rating').write_text(train)
  (directory / 'toy.test.rating').write_text(test)
  users_items = [line.split('\t')[:2] for line in test.splitlines()]
  (directory / 'toy.test.negative').write_text(
      ''.join(f'({u},{i})\t0\n' for u, i in users_items))
  return str(directory)


def test_ids_far_beyond_the_distinct_count_must_be_renumbered(tmp_path):
  _toy(tmp_path, test='0\t2\t1\t0\n1\t10000000\t1\t0\n')
  with pytest.raises(DataError, match=r'toy.test.rating:2: item id 10000000 is far beyond the 4 '
                                      r'distinct item ids of these files; renumber them .*'
                                      r'ncf_jax.data prepare'):
    dataset_lib.load_ncf_dir(str(tmp_path), 'toy')


def test_an_id_too_large_for_int32_says_so(tmp_path):
  _toy(tmp_path, train=f'0\t0\t1\t5\n{2**40}\t1\t1\t6\n')
  with pytest.raises(DataError, match=rf'toy.train.rating:2: user id {2**40} is too large'):
    dataset_lib.load_ncf_dir(str(tmp_path), 'toy')


def test_binary_negatives_are_preferred_and_checked(tmp_path):
  directory = _toy(tmp_path)
  data = dataset_lib.load_ncf_dir(directory, 'toy')
  path = tmp_path / 'toy.test.negative.npy'
  np.save(path, np.array([[3, 1], [0, 2]], dtype=np.int32))
  assert dataset_lib.has_ncf_files(directory, 'toy')
  np.testing.assert_array_equal(dataset_lib.load_ncf_dir(directory, 'toy').test.negatives,
                                [[3, 1], [0, 2]])
  os.remove(tmp_path / 'toy.test.negative')  # the binary file alone is enough
  assert dataset_lib.has_ncf_files(directory, 'toy')
  for bad, words in ((np.zeros((2, 2)), r'expected an int32 array of shape \(2, N\) .*found '
                                        r'float64 \(2, 2\)'),
                     (np.zeros((3, 2), np.int32), r'found int32 \(3, 2\)'),
                     (np.array([[0, 1], [2, -1]], np.int32), 'row 1 .* holds a negative id'),
                     (np.array([[0, 1], [2, 9]], np.int32),
                      r'toy.test.negative.npy: row 1: negative item id 9 is out of range')):
    np.save(path, bad)
    with pytest.raises(DataError, match=words):
      dataset_lib.load_ncf_dir(directory, 'toy')
  path.write_bytes(b'not numpy')
  with pytest.raises(DataError, match=r'toy.test.negative.npy: not a NumPy .npy array'):
    dataset_lib.load_ncf_dir(directory, 'toy')
  del data


def test_npy_round_trip(tmp_path):
  data = dataset_lib.load_ncf_dir(_toy(tmp_path), 'toy')
  write_ncf_dir(data, str(tmp_path / 'out'), negatives_format='npy')
  assert not os.path.exists(tmp_path / 'out' / 'toy.test.negative')
  again = dataset_lib.load_ncf_dir(str(tmp_path / 'out'), 'toy')
  np.testing.assert_array_equal(again.test.negatives, data.test.negatives)
  assert again.source_dir == str(tmp_path / 'out')


def test_datasets_without_maps(tmp_path):
  data = dataset_lib.load_ncf_dir(_toy(tmp_path), 'toy')
  assert id_maps.read_id_maps(str(tmp_path)) is None and id_maps.id_maps_for(data) is None
  assert id_maps.read_manifest(str(tmp_path)) is None
  synthetic = registry.load_dataset(_data(
      dataset='synthetic', synthetic=tuple(dict(num_users=20, num_items=120,
                                                interactions_per_user=5, seed=0).items())))
  assert synthetic.source_dir is None and id_maps.id_maps_for(synthetic) is None
  (tmp_path / 'users.tsv').write_text('a\nb\nc\n')
  with pytest.raises(DataError, match='items.tsv: missing, but .*users.tsv is there'):
    id_maps.id_maps_for(data)
  (tmp_path / 'items.tsv').write_text('0\n1\n2\n3\n')
  with pytest.raises(DataError, match=r'users.tsv: 3 lines, but the dataset has 2 users'):
    id_maps.id_maps_for(data)
  (tmp_path / 'users.tsv').write_text('a\nb\n')
  maps = id_maps.id_maps_for(data)
  assert maps.user_index('b') == 1
  with pytest.raises(DataError, match=r"user 'zz': not in the dataset's users.tsv"):
    maps.user_index('zz')


def test_text_readers_report_os_errors(tmp_path):
  (tmp_path / 'x.rating').mkdir()
  with pytest.raises(DataError, match='x.rating: file not found'):
    ncf_format.read_ratings(str(tmp_path / 'x.rating'))


def test_item_metadata_titles_by_original_id(tmp_path):
  path = tmp_path / 'movies.csv'
  path.write_text('movieId,title,genres\n1,Toy Story (1995),Animation\n'
                  '11,"American President, The (1995)",Comedy|Drama\n1,Again,x\n')
  assert id_maps.read_item_metadata(str(path), 'movieId', 'title') == {
      '1': 'Toy Story (1995)', '11': 'American President, The (1995)'}
  with pytest.raises(DataError, match=r"movies.csv:1: no column 'name' in the header; its "
                                      r"columns are: 'movieId', 'title', 'genres'$"):
    id_maps.read_item_metadata(str(path), 'movieId', 'name')
  path.write_text('movieId,title\n1,Toy Story\n2\n')
  with pytest.raises(DataError, match=r'movies.csv:3: expected 2 fields, found 1$'):
    id_maps.read_item_metadata(str(path), 'movieId', 'title')
  with pytest.raises(DataError, match=r'nothing.csv: file not found$'):
    id_maps.read_item_metadata(str(tmp_path / 'nothing.csv'), 'movieId', 'title')


def test_train_and_heldout_set_holds_the_heldout_pairs(tmp_path):
  data = dataset_lib.load_ncf_dir(_toy(tmp_path), 'toy')
  assert not data.train_set.contains(data.test.users, data.test.items).any()
  assert data.train_and_heldout_set.contains(data.test.users, data.test.items).all()
  assert data.train_and_heldout_set.contains(data.train_users, data.train_items).all()
  assert not data.train_and_heldout_set.contains(np.array([0]), np.array([3]))[0]
